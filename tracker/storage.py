"""Where the tracker keeps what it knows: one interface, two databases.

- `sqlite.SqliteStorage`, the default: one file, held by one tracker process under an exclusive lock.
- `postgres.PostgresStorage`: a PostgreSQL database that any number of tracker replicas share, so
  that any replica answers any request and a fleet survives the loss of one.

The database is the truth. Everything the routes show comes from it, counts included, so every
replica answers alike; what a replica keeps for itself (rate limits, the replay cache, its request
counters) it says is its own. A new kind of state (leases, for one) is a new group of methods here,
with one implementation in each module; the routes never see which database answers.

Every failure to reach or use the database is a `DatabaseError`, which the routes answer with 503.
"""

from dataclasses import dataclass
from typing import Protocol

from .model import Announce, Peer


class DatabaseError(Exception):
    """The database cannot be used (unreachable, failing, or not a tracker's); the message says why."""


class SequenceMismatch(Exception):
    """A delta whose `since` is not the sequence held for the peer: nothing of it was applied."""

    def __init__(self, held: int | None) -> None:
        super().__init__("no set is held for this peer" if held is None else f"the tracker holds sequence {held}")
        self.held = held


@dataclass(frozen=True)
class Counts:
    peers_online: int
    peers_offline: int
    paths: int  # distinct hash parts that someone holds
    holdings: int  # (peer, hash part) pairs: the sum of every peer's set


@dataclass(frozen=True)
class Lease:
    """Who fetches a path from the upstream for the fleet, until when."""

    holder: bytes  # the holder's key
    until: float
    peer: Peer | None  # the holder as the tracker knows it (None: it never announced)


class Storage(Protocol):
    """Peers, their sets and who holds what. A peer is online while it has been heard from since
    `online_since` and has not departed; lookups name online peers only, most recently seen first."""

    name: str  # for logs: the file or the URL without secrets

    async def open(self) -> None:
        """Connect, create or migrate the schema; DatabaseError if this cannot be a tracker's database."""

    async def close(self) -> None: ...

    # Reads

    async def peers(self) -> list[Peer]:
        """Every peer, online or not."""

    async def peer(self, key: bytes) -> Peer | None:
        """One peer, online or not; None when the tracker holds nothing for it."""

    async def holders(self, packed: bytes, online_since: float, limit: int) -> list[Peer]:
        """The online peers holding one hash (its 20 packed bytes)."""

    async def holders_many(self, packed: list[bytes], online_since: float, limit: int) -> dict[bytes, list[Peer]]:
        """As `holders` for many hashes; hashes no online peer holds are left out."""

    async def counts(self, online_since: float) -> Counts: ...

    async def check(self) -> int:
        """Prove the database answers; its schema version."""

    async def size(self) -> int:
        """Bytes the database takes on disk."""

    # Writes: each one transaction, whole or not at all

    async def announce(self, key: bytes, announce: Announce, now: float) -> tuple[Peer, int, int]:
        """Apply a full announce, or a delta if `since` is the sequence held (else SequenceMismatch);
        the peer as stored, and how many hashes it gained and lost."""

    async def depart(self, key: bytes, now: float) -> Peer | None:
        """Take a peer out of lookups, keeping its set and sequence for its return."""

    async def purge(self, key: bytes) -> tuple[Peer, int] | None:
        """Drop a peer's set but keep the peer; its sequence becomes 0, so its next delta meets a 409.
        The peer as stored, and how many hashes it lost."""

    async def remove(self, key: bytes) -> Peer | None:
        """Remove a peer and its set."""

    async def expire(self, silent_since: float) -> list[Peer] | None:
        """Remove the peers not heard from since `silent_since`, one transaction each, and forget claims and
        leases that have run out; None when another replica is doing it at this moment."""

    async def claim(self, key: bytes, until: float) -> bool:
        """Remember a write's key (its peer and nonce) until `until`; False when it was claimed before, by any
        replica: the write is a replay."""

    # Leases: one host at a time fetches a path from the upstream, the others follow it

    async def lease(self, packed: bytes, key: bytes, until: float, now: float) -> Lease:
        """Grant the lease on a hash to `key` until `until` when nobody holds one that runs past `now`,
        or renew it if `key` holds it; either way, the lease as it stands."""

    async def release(self, packed: bytes, key: bytes) -> bool:
        """End `key`'s lease on a hash; False when it held none."""


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))
