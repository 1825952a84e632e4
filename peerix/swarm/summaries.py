"""Store summaries on the LAN: ours, published for LAN peers, and theirs, fetched when their LAN
packets name a new generation, so that a narinfo question goes only to the LAN peers that may hold
the path.

The LAN has no index: without summaries every live LAN peer is asked about every path. A summary
only ever saves questions. A peer whose fresh filter surely lacks the path is asked last, once no
likely holder had it: a filter built just before the peer got the path claims too little until its
next generation reaches us. A peer with no filter, an outdated one or a corrupt one is asked as if
summaries did not exist.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import iroh

from ..net import wire
from ..net.endpoint import EndpointAddress, PeerEndpoint, PeerUnreachable
from ..net.store_filter import FORMAT, MAX_BYTES, FilterError, StoreFilter
from ..store.held import HeldPaths
from ..store.local import LocalStore
from ..telemetry.metrics import Metrics
from .policy import Policy

log = logging.getLogger(__name__)

RETRY = 60.0  # seconds before a peer whose summary failed (or who had none for us) is asked again


async def shareable_hashes(local: LocalStore, policy: Policy, held: HeldPaths | None) -> list[str]:
    """The hash parts of the paths the policy lets this host share (held ones too): what it announces."""
    pulled = [(info.store_path.basename, info.sigs) for info in held.infos()] if held else []
    return [name[:32] for name, sigs in await local.signatures() + pulled if policy.announceable(name, sigs)]


class OwnSummary:
    """This host's summary, rebuilt when the store (or the held paths) changed, at most once a poll."""

    def __init__(self, local: LocalStore, policy: Policy, held: HeldPaths | None, timeout: float = 10.0,
                 poll: float = 1.0, on_change: Callable[[], None] = lambda: None) -> None:
        self.local = local
        self.policy = policy
        self.held = held
        self.timeout = timeout
        self.poll = poll
        self.on_change = on_change  # a new generation: tell the LAN
        self.filter: StoreFilter | None = None

    @property
    def generation(self) -> int | None:
        return self.filter.generation if self.filter else None

    async def run(self) -> None:
        seen = None
        while True:
            current = (self.local.generation(), self.held.version if self.held else None)
            if current != seen:
                try:
                    await self.rebuild()
                    seen = current
                except Exception:  # a bug must be loud, and must not end summaries for good
                    log.exception("store summary failed")
            await asyncio.sleep(self.poll)

    async def rebuild(self) -> None:
        hashes = await shareable_hashes(self.local, self.policy, self.held)
        built = await asyncio.to_thread(StoreFilter.build, hashes)
        if self.filter is None or built.generation != self.filter.generation:
            self.filter = built
            log.info("store summary paths=%d bytes=%d generation=%x", built.size, len(built.data), built.generation)
            self.on_change()

    async def serve(self, peer_id: str, stream: iroh.BiStream) -> None:
        """`/peerix/summary/1`."""
        send, built = stream.send(), self.filter
        header = ({"status": "ok", "format": FORMAT, "generation": built.generation, "size": len(built.data)}
                  if built else {"status": "not-found"})
        async with asyncio.timeout(self.timeout):
            await wire.read_frame(stream.recv())
            await send.write_all(wire.encode_frame(header) + (built.data if built else b""))
            await send.finish()
            await send.stopped()


class PeerSummaries:
    """LAN peers' summaries, each fetched when the peer's packets name a generation we do not have."""

    def __init__(self, endpoint: PeerEndpoint, metrics: Metrics, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self.timeout = timeout
        self.announced: dict[str, int] = {}  # peer id -> the generation its last packet named
        self.filters: dict[str, StoreFilter] = {}
        self._fetching: dict[str, asyncio.Task] = {}
        self._unusable: dict[str, tuple[int, float]] = {}  # peer id -> (generation, when) it failed or had none

    def heard(self, address: EndpointAddress, generation: int) -> None:
        peer = address.endpoint_id
        self.announced[peer] = generation
        have, unusable = self.filters.get(peer), self._unusable.get(peer)
        if ((have is None or have.generation != generation) and peer not in self._fetching
                and not (unusable and unusable[0] == generation and time.monotonic() - unusable[1] < RETRY)):
            task = self._fetching[peer] = asyncio.create_task(self._fetch(address, generation))
            task.add_done_callback(lambda _: self._fetching.pop(peer, None))

    def lacks(self, peer_id: str, hash_part: str) -> bool:
        """Whether the peer's current summary surely lacks the path (False when we have no current one)."""
        have = self.filters.get(peer_id)
        return have is not None and have.generation == self.announced.get(peer_id) and hash_part not in have

    async def _fetch(self, address: EndpointAddress, generation: int) -> None:
        peer = address.endpoint_id
        try:
            async with asyncio.timeout(self.timeout):
                _, got = await self.endpoint.request(address, wire.SUMMARY_ALPN, wire.encode_frame({}), _read)
        except (TimeoutError, PeerUnreachable, iroh.IrohError, wire.WireError, FilterError) as error:
            self._unusable[peer] = (generation, time.monotonic())
            self.metrics.summaries_fetched.labels("failed").inc()
            log.info("store summary not fetched peer=%s error=%s", peer[:10], error or type(error).__name__)
            return
        if got is None:  # it publishes none, or none to us (a closed fleet)
            self._unusable[peer] = (generation, time.monotonic())
            self.metrics.summaries_fetched.labels("none").inc()
            return
        self.filters[peer] = got
        self.metrics.summaries_fetched.labels("ok").inc()
        log.info("store summary fetched peer=%s paths=%d bytes=%d generation=%x", peer[:10], got.size,
                 len(got.data), got.generation)

    async def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _read(recv: iroh.RecvStream) -> StoreFilter | None:
    header = await wire.read_frame(recv)
    if header.get("status") != "ok":
        return None
    size = header.get("size")
    if header.get("format") != FORMAT or not isinstance(size, int) or not 0 < size <= MAX_BYTES:
        raise FilterError(f"unusable summary: format {header.get('format')!r}, {size!r} bytes")
    got = StoreFilter.parse(await recv.read_exact(size))
    if got.generation != header.get("generation"):
        raise FilterError("the summary is not the generation it says")
    return got
