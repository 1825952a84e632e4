"""The daemon and its tracker: announcing what the local store can share, asking who has a path.

The announcer watches the Nix database cheaply (two stats a second) and announces when it
changed, or sends a heartbeat; the tracker client turns a changed set into a delta. Lookups are
cached briefly and never slow a narinfo answer down: a down tracker is one fast failure, then
the client's backoff makes every lookup an immediate "nobody".
"""

import asyncio
import logging
import time
from collections.abc import Callable

from ..metrics import Metrics
from ..store.local import LocalStore
from ..store.policy import Policy
from ..store.remote import Candidate
from ..throttle import Throttle
from .endpoint import EndpointAddress
from .tracker_client import PeerAddresses, PeerRecord, TrackerClient, TrackerError

log = logging.getLogger(__name__)


class TrackerSource:
    name = "tracker"

    def __init__(self, client: TrackerClient, metrics: Metrics, ttl: float = 2.0, entries: int = 4096) -> None:
        self.client = client
        self.metrics = metrics
        self.ttl = ttl
        self.entries = entries
        self._answers: dict[str, tuple[float, list[Candidate]]] = {}
        self.seen: dict[str, PeerRecord] = {}  # peers the tracker named, for `peerix peers`

    async def candidates(self, hash_part: str, fresh: bool = False) -> list[Candidate]:
        hit = self._answers.get(hash_part)
        if hit is not None and hit[0] > time.monotonic() and not fresh:
            return hit[1]
        try:
            records = await self.client.lookup(hash_part)
        except TrackerError as error:
            self.metrics.source_errors.labels(self.name).inc()
            log.debug("tracker lookup failed hash=%s error=%s", hash_part, error)
            return []
        found = [Candidate(EndpointAddress(r.addresses.endpoint_id, r.addresses.direct, r.addresses.relay_url),
                           self.name) for r in records]
        self.seen.update((r.peer_id, r) for r in records)
        if len(self._answers) >= self.entries:
            self._answers.clear()
        self._answers[hash_part] = (time.monotonic() + self.ttl, found)
        return found


class Announcer:
    def __init__(self, client: TrackerClient, local: LocalStore, policy: Policy, address: Callable[[], EndpointAddress],
                 name: str, metrics: Metrics, poll: float = 1.0, heartbeat: float = 60.0,
                 advised: dict[str, Throttle] | None = None) -> None:
        self.advised = advised or {}  # throttles the tracker's advice applies to (those without a local setting)
        self.client = client
        self.local = local
        self.policy = policy
        self.address = address
        self.name = name
        self.metrics = metrics
        self.poll = poll
        self.heartbeat = heartbeat
        self.announced: int | None = None  # paths in the last acknowledged announce
        self.last_success = 0.0

    async def run(self) -> None:
        generation, last = None, 0.0
        while True:
            current = self.local.generation()
            due = current != generation or time.monotonic() - last >= self.heartbeat
            if due and not self.client.in_backoff:  # a backed-off client would fail at once: one try a period
                try:
                    await self.announce()
                    generation, last = current, time.monotonic()
                except TrackerError as error:
                    self.metrics.source_errors.labels("tracker").inc()
                    if error.lasting:  # the client logged it, once for its whole backoff
                        log.debug("announce refused error=%s", error)
                    else:
                        log.warning("announce failed error=%s", error)
                except Exception:  # a bug must be loud, and must not end announcing for good
                    log.exception("announce crashed")
            await asyncio.sleep(self.poll)

    async def announce(self) -> None:
        hashes = [h for h, sigs in await self.local.signatures() if self.policy.announceable(sigs)]
        address = self.address()
        await self.client.announce(hashes, PeerAddresses(address.endpoint_id, address.direct, address.relay_url),
                                   self.name)
        self.announced, self.last_success = len(hashes), time.time()
        for name, throttle in self.advised.items():
            rate = self.client.advice.get(name, 0)  # no advice: unlimited, as without a tracker
            if rate != throttle.rate:
                if rate:
                    log.info("tracker advice applied %s=%d", name, rate)
                else:
                    log.info("tracker advice withdrawn %s, unlimited now", name)
                throttle.set_rate(rate)
