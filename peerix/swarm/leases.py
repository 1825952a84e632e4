"""Who in the fleet downloads a path from the upstream, so the internet sees each NAR once.

A lease is short and renewable: its holder renews it while its download makes progress and gives it
up when it ends or stalls, so a holder that dies or hangs loses it within seconds. Three ways to
agree, by what the host has:
- a tracker: it grants the lease to one host at a time and names the holder to the others (while it
  cannot be asked, the host agrees as it would without one);
- only LAN peers: each host's announcements list the paths it is fetching (its claims); a host
  claims a path nobody claims, waits a moment for a simultaneous claim, and the lowest peer id wins;
- neither: every host fetches for itself.
"""

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from ..net.lan import LanDiscovery
from ..net.tracker_client import TrackerClient, TrackerError
from .candidates import Candidate, address_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    granted: bool
    holder: Candidate | None = None  # who holds it, when it is not granted
    wait: float = 0.0  # not granted, and nobody to follow (the holder failed us): ask again after this long


class Leases(Protocol):
    async def acquire(self, hash_part: str, excluding: Collection[str] = ()) -> Lease:
        """Take the lease or renew it, or learn who holds it (other than the peers `excluding`, which
        just failed us); never raises: when nobody can be asked, the lease is granted."""
        ...

    async def release(self, hash_part: str, finished: bool) -> None:
        """The download ended: `finished` with every byte (the copy is there to be followed), or not."""
        ...


class Alone:
    """Nobody to agree with: every host fetches for itself."""

    async def acquire(self, hash_part: str, excluding: Collection[str] = ()) -> Lease:
        return Lease(True)

    async def release(self, hash_part: str, finished: bool) -> None:
        return None


class LanLeases:
    """Claims in LAN announcements: whoever claimed first holds it; at the same moment, the lowest id."""

    def __init__(self, lan: LanDiscovery, settle: float = 0.25) -> None:
        self.lan = lan
        self.settle = settle  # how long a fresh claim waits for a simultaneous one (busy hosts answer late)

    async def acquire(self, hash_part: str, excluding: Collection[str] = ()) -> Lease:
        if hash_part in self.lan.pulling:
            return Lease(True)  # ours already: renewed by every announcement
        if (holder := self._holder(hash_part, excluding)) is not None:
            return Lease(False, holder)
        self.lan.claim(hash_part)
        await asyncio.sleep(self.settle)
        holder = self._holder(hash_part, excluding)
        if holder is not None and holder.peer_id < self.lan.peer_id:
            self.lan.unclaim(hash_part)
            return Lease(False, holder)
        return Lease(True)

    async def release(self, hash_part: str, finished: bool) -> None:
        self.lan.unclaim(hash_part)  # a finished copy is found anyway: LAN peers are asked for whole copies

    def _holder(self, hash_part: str, excluding: Collection[str]) -> Candidate | None:
        claimers = [peer for peer in self.lan.live_peers()
                    if hash_part in peer.announcement.pulling and peer.announcement.peer_id not in excluding]
        if not claimers:
            return None
        first = min(claimers, key=lambda peer: peer.announcement.peer_id)
        return Candidate(first.announcement.address, first.source)


class TrackerLeases:
    """The tracker's leases; while the tracker cannot be asked, `fallback` (LAN claims, or alone)."""

    def __init__(self, client: TrackerClient, fallback: Leases) -> None:
        self.client = client
        self.fallback = fallback

    async def acquire(self, hash_part: str, excluding: Collection[str] = ()) -> Lease:
        try:
            granted, holder, ttl = await self.client.lease(hash_part)
        except TrackerError as error:
            log.info("lease not asked of the tracker hash=%s error=%s", hash_part, error)
            return await self.fallback.acquire(hash_part, excluding)
        if granted:
            return Lease(True)
        if holder is None or holder.peer_id in excluding:
            return Lease(False, None, wait=min(1.0, ttl))  # its lease runs out within ttl if it is gone
        return Lease(False, Candidate(address_of(holder), "tracker"))

    async def release(self, hash_part: str, finished: bool) -> None:
        """A finished lease is marked done and left to run out: until then the tracker names this host,
        whose copy is whole, to those who ask (until it is announced, a lookup would not find it). A
        failed one is given up at once, for another host to take over."""
        try:
            if finished:
                await self.client.lease(hash_part, done=True)
            else:
                await self.client.release_lease(hash_part)
        except TrackerError as error:
            log.info("lease not handed back to the tracker hash=%s finished=%s error=%s", hash_part, finished, error)
        await self.fallback.release(hash_part, finished)
