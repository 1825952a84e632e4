"""Pull-through: a path no peer holds but the upstream cache has is fetched by this host, streamed to
its Nix as it arrives, and then held for the fleet.

One download per path per host: a second request for a path already coming joins it. The NAR grows
in the held directory (store/held.py) while it downloads, so peers may fetch the part already there
and follow the rest; it is published, and announced, once it matched its NarHash.

Across the fleet, a lease decides who downloads from the upstream (`Leases`): the tracker grants a
short, renewable lease on the path to one host at a time. The others fill their own copy from that
host as it grows, by range, instead of going upstream; so every host that wanted the path ends up
holding it too. The lease holder renews its lease while its download makes progress and gives it
up when it ends or stalls, so a host that dies or hangs loses it within its time to live. A follower
whose holder fails takes the lease over and continues from the upstream where its copy ends (the
upstream's file is compressed, so it is fetched from its start and the part already there skipped).
A follower whose holder sends slower than `min_rate` goes upstream itself: never slower than alone.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..net.upstream import Upstream, UpstreamError
from ..nix.narinfo import NarInfo
from ..store.held import Growing, HeldError, HeldPaths
from ..telemetry.activity import UPSTREAM, current_fetch
from ..telemetry.metrics import Metrics
from .candidates import Candidate
from .leases import Leases
from .peers import Peers
from .policy import Policy
from .transfer import NarFetchError, PeerRange, TransferSettings, open_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullSettings:
    stall_timeout: float = 10.0  # a source silent this long is given up (and the lease with it)
    renew_every: float = 2.0  # lease renewals while the download makes progress
    min_rate: float = 1 << 20  # bytes/s a holder must keep up, measured over `rate_window`, or we go upstream
    rate_window: float = 5.0


MAX_PEERS_ASKED = 4  # peers asked whether they hold a path whole before going to the lease
MAX_LEASE_WAIT = 15.0  # seconds waited for a failed holder's lease to run out before fetching anyway
TIMED_DOWNLOAD = 1 << 20  # NAR bytes from the upstream in one go that make a fair measure of its rate


class TooSlow(Exception):
    """A peer sends slower than min_rate: going upstream is faster."""


class PullThrough:
    def __init__(self, upstream: Upstream, held: HeldPaths, policy: Policy, peers: Peers, leases: Leases,
                 transfer: TransferSettings, settings: PullSettings = PullSettings()) -> None:
        self.upstream = upstream
        self.held = held
        self.policy = policy
        self.peers = peers
        self.leases = leases
        self.transfer = transfer
        self.settings = settings
        self._downloads: dict[str, asyncio.Task] = {}

    @property
    def metrics(self) -> Metrics:
        return self.peers.metrics

    async def find(self, hash_part: str) -> NarInfo | None:
        """The upstream's narinfo for a path, when a key this host trusts signed it (the signatures
        pass through untouched); None when the upstream lacks it, cannot be asked, or is not trusted."""
        try:
            info = await self.upstream.narinfo(hash_part)
        except UpstreamError as error:
            log.info("upstream lookup failed hash=%s error=%s", hash_part, error)
            return None
        if info is None or info.store_path.hash_part != hash_part:
            return None
        if not self.policy.trusted_sigs(info):
            log.warning("not pulling through path=%s: no signature by a trusted key", info.store_path)
            return None
        return info

    def open(self, info: NarInfo) -> AsyncIterator[bytes]:
        """The NAR for the local Nix, as it arrives; its last chunk once the whole matched its NarHash."""
        hash_part = info.store_path.hash_part
        growing = self.held.growing(hash_part)
        if growing is None:
            growing = self.held.begin(info)
            self._downloads[hash_part] = task = asyncio.create_task(self._fetch(growing, info))
            task.add_done_callback(lambda _: self._downloads.pop(hash_part, None))
        return growing.read(verified=True)

    async def _fetch(self, growing: Growing, info: NarInfo) -> None:
        """Fill the held copy from the lease holder or the upstream until it is whole, then publish
        it. It runs on its own: a Nix that goes away does not stop what other hosts may follow. It
        runs in the context of the request that started it: its bytes are credited to that fetch."""
        hash_part, started = info.store_path.hash_part, time.monotonic()
        outcome, how = "failed", "upstream"
        try:
            failed: set[str] = set()  # peers that failed us: not followed again for this path
            waited = 0.0
            while growing.written < info.nar_size:
                if await self._from_peers(growing, info, failed):  # someone holds it whole by now
                    how = "peer"
                    break
                lease = await self.leases.acquire(hash_part, failed)
                if lease.holder is None and not lease.granted and waited < MAX_LEASE_WAIT:
                    waited += lease.wait  # the holder failed us and its lease has yet to run out
                    await asyncio.sleep(lease.wait)
                    continue
                if lease.holder is None:
                    await self._from_upstream(growing, info, lease.granted)
                    break
                how = "peer"
                self.metrics.lease_waited(holder_failed=not await self._follow(growing, info, lease.holder, failed))
            await asyncio.to_thread(growing.finish)
            self.held.publish(growing, info.to_text())
            outcome = "complete"
        except (UpstreamError, HeldError, OSError) as error:
            growing.fail(error)
            self.held.abandon(growing)
            log.warning("pull-through failed path=%s error=%s", info.store_path, error)
        except BaseException as error:
            growing.fail(error)
            self.held.abandon(growing)
            raise
        finally:
            self.metrics.upstream_fetches.labels(outcome).inc()
            log.info("pulled through %s path=%s via=%s bytes=%d seconds=%.3f", outcome, info.store_path, how,
                     growing.written, time.monotonic() - started)

    async def _from_upstream(self, growing: Growing, info: NarInfo, leased: bool) -> None:
        """The rest of the NAR from the upstream: its file from the start, the part already held skipped."""
        skip = written = growing.written
        renewer = asyncio.create_task(self._renew(growing)) if leased else None
        started, fetch = time.monotonic(), current_fetch()
        try:
            chunks = self.upstream.nar(info, self.metrics.from_upstream)
            async with contextlib.aclosing(chunks):
                while (chunk := await self._next(chunks, "the upstream")) is not None:
                    if skip:
                        chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                    if chunk:
                        growing.write(chunk)
                        if fetch is not None:
                            fetch.credit(UPSTREAM, len(chunk))
            if growing.written - written >= TIMED_DOWNLOAD:
                self.metrics.activity.timed_upstream(growing.written - written, time.monotonic() - started)
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                with contextlib.suppress(Exception):
                    await self.leases.release(info.store_path.hash_part, growing.written == info.nar_size)

    async def _from_peers(self, growing: Growing, info: NarInfo, failed: set[str]) -> bool:
        """The rest of the NAR from a peer that holds it whole now (it finished its own pull-through
        while we looked elsewhere, say); False when none does."""
        candidates = [c for c in await self.peers.candidates(info.store_path.hash_part, fresh=True)
                      if c.peer_id not in failed]
        for candidate in candidates[:MAX_PEERS_ASKED]:
            if await self._follow(growing, info, candidate, failed, growing_copy=False):
                return True
        return False

    async def _follow(self, growing: Growing, info: NarInfo, holder: Candidate, failed: set[str],
                      growing_copy: bool = True) -> bool:
        """The rest of the NAR from one peer: from a copy it holds whole or, with `growing_copy`, from
        one it is still pulling through, following it. False when it has none, or fails or stalls (it
        is then added to `failed`); when it cannot keep `min_rate`, the rest comes from the upstream,
        whoever holds the lease."""
        try:
            source = await open_range(self.peers, holder, info, growing.written, info.nar_size, self.transfer,
                                      self.metrics.peer_wire_bytes.labels("received").inc, growing_copy)
            if source is None:
                return False
            try:
                await self._copy(growing, source)
            finally:
                await source.close()
            return True
        except NarFetchError as error:
            failed.add(holder.peer_id)
            log.info("pull-through peer failed path=%s peer=%s at byte %d: %s", info.store_path,
                     holder.peer_id[:10], growing.written, error)
            return False
        except TooSlow as error:
            log.info("pull-through peer too slow path=%s peer=%s: going upstream (%s)", info.store_path,
                     holder.peer_id[:10], error)
            await self._from_upstream(growing, info, False)
            return True

    async def _copy(self, growing: Growing, source: PeerRange) -> None:
        """A peer's range into the held copy, as fast as `min_rate` at least (else TooSlow)."""
        window_start, window_bytes = time.monotonic(), 0
        fetch = current_fetch()
        while growing.written < growing.info.nar_size:
            chunk = await source.read()
            growing.write(chunk)
            if fetch is not None:
                fetch.credit(source.candidate.peer_id, len(chunk))
            self.metrics.saved_from_upstream(len(chunk))
            self.metrics.peer_received_bytes.inc(len(chunk))
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= self.settings.rate_window:
                if window_bytes / elapsed < self.settings.min_rate:
                    raise TooSlow(f"{window_bytes / elapsed / (1 << 20):.2f} MiB/s")
                window_start, window_bytes = time.monotonic(), 0

    async def _next(self, chunks: AsyncIterator[bytes], source: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.settings.stall_timeout):
                return await anext(chunks, None)
        except TimeoutError:
            raise UpstreamError(f"{source} was silent for {self.settings.stall_timeout:g} s") from None

    async def _renew(self, growing: Growing) -> None:
        """Keep the lease while the download makes progress; a stalled one lets it lapse."""
        hash_part, last = growing.info.store_path.hash_part, -1
        while True:
            await asyncio.sleep(self.settings.renew_every)
            if growing.written != last:
                last = growing.written
                await self.leases.acquire(hash_part)

    async def close(self) -> None:
        for task in list(self._downloads.values()):
            task.cancel()
        await asyncio.gather(*self._downloads.values(), return_exceptions=True)

