"""Who may hold a path: candidates named by the LAN and by the tracker, fast and never an error.

Lookups are cached briefly and never slow a narinfo answer down: a down tracker is one fast
failure, then the client's backoff makes every lookup an immediate answer from what is known (the
tracker's last answer for the path, however old: the peers it named are asked). A hung tracker (one
that accepts connections but does not answer) is waited for once, up to a deadline; until it answers
again, lookups answer at once from what is known while one probe asks in the background. The deadline
is twice the tracker's slowest recent answer, within bounds: a tracker that is merely slow (a busy
machine, a link far away) is waited for, since a miss it would have answered makes Nix build the path.
A source that sees a known peer run another process (a new incarnation in the LAN packet or the
tracker's record) says so through `on_restart`.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..net.endpoint import EndpointAddress, another_process
from ..net.lan import LanDiscovery
from ..net.tracker_client import PeerRecord, TrackerClient, TrackerError
from ..telemetry.metrics import Metrics
from .summaries import PeerSummaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    address: EndpointAddress
    source: str  # "lan", "static" or "tracker"
    unlikely: bool = False  # its store summary surely lacks the path: asked only once likely holders had not

    @property
    def peer_id(self) -> str:
        return self.address.endpoint_id


class CandidateSource(Protocol):
    name: str

    async def candidates(self, hash_part: str, fresh: bool = False) -> list[Candidate]:
        """Peers that may have the path; fast, and [] rather than an error when unsure.
        `fresh`: bypass any cache, because the peers it named have failed."""
        ...

    @property
    def answering(self) -> bool:
        """Whether its answers are its own now, not "unsure": a source that cannot be asked says so here."""
        ...


class LanSource:
    name = "lan"
    answering = True  # what the LAN packets said

    def __init__(self, lan: LanDiscovery, summaries: PeerSummaries | None = None) -> None:
        self.lan = lan
        self.summaries = summaries

    async def candidates(self, hash_part: str, fresh: bool = False) -> list[Candidate]:
        """Every live LAN peer, since any of them may have the path; those whose store summary surely
        lacks it marked `unlikely`."""
        lacks = self.summaries.lacks if self.summaries else (lambda peer_id, hash_part: False)
        return [Candidate(peer.announcement.address, peer.source, lacks(peer.announcement.peer_id, hash_part))
                for peer in self.lan.live_peers()]


class TrackerSource:
    name = "tracker"

    def __init__(self, client: TrackerClient, metrics: Metrics, ttl: float = 2.0, entries: int = 4096,
                 deadline_bounds: tuple[float, float] = (0.25, 2.0),
                 on_restart: Callable[[EndpointAddress], None] = lambda address: None) -> None:
        self.client = client
        self.on_restart = on_restart  # a peer the tracker named before now runs another process
        self.metrics = metrics
        self.ttl = ttl
        self.entries = entries
        self.deadline_bounds = deadline_bounds  # the least and the most a miss waits for the tracker
        self._took: deque[float] = deque(maxlen=16)  # seconds the last answers took
        self._answers: dict[str, tuple[float, list[Candidate]]] = {}
        self._asking: dict[str, asyncio.Task[list[Candidate]]] = {}
        self._unresponsive = False  # the last lookup missed its deadline, and none has answered since
        self.seen: dict[str, PeerRecord] = {}  # peers the tracker named, for `peerix peers`

    async def candidates(self, hash_part: str, fresh: bool = False) -> list[Candidate]:
        hit = self._answers.get(hash_part)
        if hit is not None and hit[0] > time.monotonic() and not fresh:
            return hit[1]
        known = hit[1] if hit is not None else []
        if self._unresponsive and self._asking:
            return known  # one probe at a time while the tracker does not answer
        task = self._asking.get(hash_part) or self._ask(hash_part)
        deadline = self.deadline
        try:
            async with asyncio.timeout(0 if self._unresponsive else deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            if not self._unresponsive:
                log.warning("tracker lookup missed its deadline, answering from what is known until it answers "
                            "tracker=%s deadline=%.3f", self.client.url, deadline)
            self._unresponsive = True
            return known

    @property
    def answering(self) -> bool:
        """False while the tracker is backing off or did not answer its last lookup in time."""
        return not self._unresponsive and not self.client.in_backoff

    @property
    def deadline(self) -> float:
        """How long a miss waits for the tracker: twice the slowest of its last answers, within bounds."""
        least, most = self.deadline_bounds
        return min(most, max(least, 2 * max(self._took, default=0.0)))

    def _ask(self, hash_part: str) -> asyncio.Task[list[Candidate]]:
        task = self._asking[hash_part] = asyncio.create_task(self._lookup(hash_part))
        task.add_done_callback(lambda _: self._asking.pop(hash_part, None))
        return task

    async def _lookup(self, hash_part: str) -> list[Candidate]:
        started = time.monotonic()
        try:
            records = await self.client.lookup(hash_part)
            self._took.append(time.monotonic() - started)  # an answer that missed the deadline counts too
        except TrackerError as error:
            self.metrics.source_errors.labels(self.name).inc()
            log.debug("tracker lookup failed hash=%s error=%s", hash_part, error)
            known = self._answers.get(hash_part)
            return known[1] if known is not None else []
        if self._unresponsive:
            log.info("tracker answers again tracker=%s", self.client.url)
        self._unresponsive = False
        found = [Candidate(address_of(r), self.name) for r in records]
        self._remember(records)
        if len(self._answers) >= self.entries:
            self._answers.clear()
        self._answers[hash_part] = (time.monotonic() + self.ttl, found)
        return found

    async def close(self) -> None:
        """Cancel the lookups still running in the background."""
        tasks = list(self._asking.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _remember(self, records: list[PeerRecord]) -> None:
        """Keep each peer's newest record; report a peer whose newest record shows another process."""
        for record in records:
            known = self.seen.get(record.peer_id)
            if known is not None and record.last_seen < known.last_seen:
                continue  # an answer that overtook a newer one
            if known is not None and another_process(address_of(known), address_of(record)):
                self.on_restart(address_of(record))
            self.seen[record.peer_id] = record


def address_of(record: PeerRecord) -> EndpointAddress:
    a = record.addresses
    return EndpointAddress(a.endpoint_id, a.direct, a.relay_url, a.incarnation)
