"""The peers the tracker knows: announces, lookups and liveness, over the database.

The peers table is small (a row a machine) and every lookup reads it, so it is mirrored in memory
as `Peer` objects whose JSON is rendered once per announce. The database stays the truth and is
all a restart reads. A peer is online while it has been heard from within `offline_after`
and has not deregistered;
lookups leave offline peers out and answer the most recently seen first; `expire` removes peers
silent for longer than `remove_after`, with their hashes.
"""

import operator

from .db import Database
from .model import Announce, Peer

_LAST_SEEN = operator.attrgetter("last_seen")


class Registry:
    def __init__(self, db: Database, offline_after: float) -> None:
        self.db = db
        self.offline_after = offline_after
        self._by_key: dict[bytes, Peer] = {}
        self._by_row: dict[int, Peer] = {}

    async def load(self) -> None:
        for peer in await self.db.peers():
            self._store(peer)

    def peers(self) -> list[Peer]:
        return list(self._by_key.values())

    def is_online(self, peer: Peer, now: float) -> bool:
        return peer.departed is None and peer.last_seen >= now - self.offline_after

    def count_online(self, now: float) -> int:
        return sum(self.is_online(peer, now) for peer in self._by_key.values())

    @property
    def holdings(self) -> int:
        """(peer, hash) pairs: the sum of every peer's set."""
        return sum(peer.paths for peer in self._by_key.values())

    async def announce(self, key: bytes, announce: Announce, now: float) -> tuple[Peer, int, int]:
        """Apply an announce; SequenceMismatch when a delta does not follow the set held."""
        peer, added, removed = await self.db.announce(key, announce, now)
        self._store(peer)
        return peer, added, removed

    async def depart(self, key: bytes, now: float) -> Peer | None:
        peer = await self.db.depart(key, now)
        if peer is not None:
            self._store(peer)
        return peer

    async def purge(self, key: bytes) -> Peer | None:
        peer = await self.db.purge(key)
        if peer is not None:
            self._store(peer)
        return peer

    async def remove(self, key: bytes) -> Peer | None:
        peer = await self.db.remove(key)
        if peer is not None:
            self._forget(peer)
        return peer

    async def expire(self, now: float, remove_after: float) -> list[Peer]:
        """Remove the peers silent for `remove_after`, one transaction each so announces interleave."""
        cutoff = now - remove_after
        removed = []
        for stale in [peer for peer in self._by_key.values() if peer.last_seen < cutoff]:
            if (peer := await self.db.remove(stale.key, silent_since=cutoff)) is not None:
                self._forget(peer)
                removed.append(peer)
        return removed

    def lookup(self, packed: bytes, now: float, limit: int) -> list[Peer]:
        return self._online(self.db.holders(packed), now, limit)

    async def lookup_many(self, asked: dict[str, bytes], now: float, limit: int) -> dict[str, list[Peer]]:
        rows = await self.db.holders_many(list(asked.values()))
        return {hash_part: self._online(rows.get(packed, ()), now, limit) for hash_part, packed in asked.items()}

    def _online(self, rows: list[int] | tuple, now: float, limit: int) -> list[Peer]:
        """The online peers among database rows, most recently seen first (a row not yet mirrored is skipped)."""
        cutoff = now - self.offline_after
        peers = [peer for row in rows if (peer := self._by_row.get(row)) is not None and peer.last_seen >= cutoff
                 and peer.departed is None]
        peers.sort(key=_LAST_SEEN, reverse=True)
        return peers[:limit]

    def _store(self, peer: Peer) -> None:
        if (old := self._by_key.get(peer.key)) is not None and old.row != peer.row:
            self._by_row.pop(old.row, None)
        self._by_key[peer.key] = peer
        self._by_row[peer.row] = peer

    def _forget(self, peer: Peer) -> None:
        if (held := self._by_key.get(peer.key)) is not None and held.row == peer.row:
            del self._by_key[peer.key]
            self._by_row.pop(peer.row, None)
