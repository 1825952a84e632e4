"""One NAR from peers, handed on as one continuous stream checked against its NarHash.

A holder that dies must cost the others a fraction of a second, not its timeout: whenever the peer
asked stays silent for the stall timeout (before its first byte or in the middle) while another
holder could send, that holder is asked too, and the first to send carries on.

A NAR below the split threshold comes from one peer at a time: when that peer fails or stalls in
the middle, the next one is asked for the rest, from the byte already received. A larger NAR is cut
into pieces fetched by several peers at once and written at their offsets into a temporary file
that has no name (O_TMPFILE: nothing to clean up on any exit path, a crash included); the caller
reads the front of it as soon as it is complete. A peer that finishes early takes half of the
largest piece still running (work stealing), and a peer silent while others deliver loses its
piece to them.

Whatever the mode, the caller gets the bytes one chunk late: the last chunk is released only once
the whole NAR hashed to its NarHash, so a lying peer can never complete a transfer.
"""

import asyncio
import bisect
import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import iroh

from ..net import compression, wire
from ..net.compression import CompressionError
from ..net.endpoint import PeerUnreachable
from ..net.fast_path import FastPathError, HttpBody, is_nearby, nearby_hosts
from ..nix import nix32
from ..nix.narinfo import PathInfo
from ..store.substituter import HoldersFailed, NarUnavailable
from ..telemetry.activity import current_fetch
from .candidates import Candidate
from .peers import Peers

log = logging.getLogger(__name__)

READ_SIZE = 4 << 20
LIAR_BAN = 3600.0  # seconds a peer proven to send wrong bytes is not asked again
RELOOK = 1.0  # seconds between lookups while no holder is left to resume a NAR


class NarFetchError(NarUnavailable):
    """No peer could start the NAR, or the transfer failed or did not match its NarHash."""


@dataclass(frozen=True)
class TransferSettings:
    read_timeout: float = 30.0  # silence from the only peer sending before it is given up on
    split_threshold: int = 64 << 20  # NARs this large are fetched from several peers at once
    max_piece: int = 16 << 20  # pieces are a quarter of a peer's share, within these bounds
    min_piece: int = 1 << 20
    max_sources: int = 4
    min_steal: int = 1 << 20  # a running piece is split only if both halves are at least this large
    stall_timeout: float = 0.5  # a peer silent this long has the next holder asked too (split: loses its piece)
    temporary_dir: str | None = None  # where split transfers keep their pieces
    compression: str = "auto"  # zstd: auto (asked of remote peers, accepted from near ones), always, never
    name: str | None = None  # this host's name, told to the peers it asks (for their dashboards)


class PeerRange:
    """Bytes [start, end) of a NAR streaming from one peer: over iroh, raw or as zstd blocks, or over
    the fast path, which `reopen` replaces with an iroh stream from the same peer if it breaks."""

    def __init__(self, candidate: Candidate, recv: iroh.RecvStream | HttpBody, start: int, end: int,
                 read_timeout: float, blocks: bool, on_wire: Callable[[int], None],
                 reopen: Callable[[int], Awaitable[tuple[iroh.RecvStream, bool]]] | None = None) -> None:
        self.candidate = candidate
        self.recv = recv
        self.position = start
        self.end = end
        self.read_timeout = read_timeout
        self.blocks = blocks
        self.on_wire = on_wire  # bytes as they crossed the network
        self.reopen = reopen  # (position) -> the rest over iroh, when the fast path breaks

    async def read(self, limit: int = READ_SIZE) -> bytes:
        """The next chunk (a whole block when compressed, whatever `limit`); raises NarFetchError
        when the peer goes silent, breaks, sends a bad block or ends early."""
        try:
            async with asyncio.timeout(self.read_timeout):
                chunk = await (self._block() if self.blocks else
                               self.recv.read(min(READ_SIZE, limit, self.end - self.position)))
        except TimeoutError:
            raise NarFetchError(f"silent for {self.read_timeout:g}s at byte {self.position}") from None
        except FastPathError as error:
            return await self._over_iroh(error, limit)
        except (iroh.IrohError, CompressionError) as error:
            raise NarFetchError(f"at byte {self.position}: {describe(error)}") from None
        if not chunk:
            raise NarFetchError(f"stream ended at byte {self.position} of {self.end}")
        if not self.blocks:
            self.on_wire(len(chunk))
        self.position += len(chunk)
        return chunk

    async def _over_iroh(self, error: FastPathError, limit: int) -> bytes:
        """The fast path broke in the middle: the rest from the same peer over iroh."""
        if self.reopen is None:
            raise NarFetchError(f"at byte {self.position}: {error}") from None
        log.info("fast path broke peer=%s at byte %d: %s; going on over iroh", self.candidate.peer_id[:10],
                 self.position, error)
        reopen, self.reopen = self.reopen, None
        self.recv, self.blocks = await reopen(self.position)
        return await self.read(limit)

    async def _block(self) -> bytes:
        stored, size = compression.parse_header(await self.recv.read_exact(compression.BLOCK.size),
                                                self.end - self.position)
        data = await self.recv.read_exact(stored)
        self.on_wire(compression.BLOCK.size + stored)
        return compression.unpack(data, size)

    async def close(self) -> None:
        """Tell the peer to stop sending: the rest is not needed (finished, or given to another peer)."""
        with contextlib.suppress(iroh.IrohError):
            await self.recv.stop(0)


@dataclass
class _Piece:
    start: int
    end: int  # shrinks when another peer takes the second half
    written: int = 0  # bytes [start, start + written) are in the file
    owner: str | None = None
    streaming: bool = False  # the owner's range is open: from then on its silence counts
    last_progress: float = field(default_factory=time.monotonic)

    @property
    def position(self) -> int:
        return self.start + self.written

    @property
    def remaining(self) -> int:
        return self.end - self.position


class NarTransfer:
    def __init__(self, peers: Peers, info: PathInfo, candidates: tuple[Candidate, ...],
                 settings: TransferSettings, on_mismatch: Callable[[], None] = lambda: None) -> None:
        self.peers = peers
        self.on_mismatch = on_mismatch  # the NAR failed its hash: whoever found its narinfo should look again
        self.info = info
        self.settings = settings
        # One known peer makes a split pointless: one range after another from the same peer.
        self.split = (info.nar_size >= settings.split_threshold and settings.max_sources > 1
                      and len({c.peer_id for c in candidates}) > 1)
        self._disk_error: OSError | None = None
        self.contributed: Counter[str] = Counter()  # peer id -> bytes of the NAR it supplied
        self.fetch = current_fetch()  # the dashboard's row this transfer supplies, if any
        self.resumes = 0
        self.wire_bytes = 0
        self._unthrottled = 0  # wire bytes not yet taken from the download cap
        self._queue = list(candidates)
        self._looked_up = False
        self._tried: dict[str, int] = {}  # peer id -> its restarts when asked: a new process may be asked again
        self._backed_off: list[Candidate] = []
        self._file: BinaryIO | None = None  # split transfers: the pieces, at their offsets
        self._written_by: list[tuple[int, int, Candidate]] = []  # split: (start, end, peer) of every write
        piece_size = max(settings.min_piece, min(settings.max_piece, info.nar_size // (4 * settings.max_sources)))
        self._all = [_Piece(start, min(start + piece_size, info.nar_size))
                     for start in range(0, info.nar_size, piece_size)] if self.split else []
        self._changed = asyncio.Event()
        self._workers: dict[str, asyncio.Task] = {}
        self._idle: list[Candidate] = []
        self._holder_failed = False  # a peer that has the path failed to start it (not merely lacked it)
        self.started = time.monotonic()

    async def start(self) -> AsyncIterator[bytes]:
        """Open the front of the NAR on the first peer that has it; raises NarFetchError when none
        does, before a byte has been promised to anyone."""
        if self.split:
            try:
                self._file = tempfile.TemporaryFile(dir=self.settings.temporary_dir, prefix="peerix-nar-")
                self._fd = self._file.fileno()
            except OSError as error:
                log.warning("no temporary file for a split transfer (%s): one peer at a time", error)
                self.split = False
        first = await self._open_next(0, self._all[0].end if self.split else self.info.nar_size)
        if first is None:
            if self._file:
                self._file.close()
            raise self._none_started()
        return self._verified(self._pieces(first) if self.split else self._sequential(first))

    async def start_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) from one peer at a time, the next resuming where one failed. Unlike a
        whole NAR they cannot be checked against the NarHash: whoever asked for a part checks the
        NAR it makes of it (Nix, after resuming a download). Raises as `start` does."""
        self.split = False
        first = await self._open_next(start, end)
        if first is None:
            raise self._none_started()
        return self._unverified(self._sequential(first, start, end), start, end)

    def _none_started(self) -> NarUnavailable:
        if self._holder_failed:
            return HoldersFailed(f"the peers holding {self.info.store_path} failed to send it")
        return NarFetchError(f"no peer has {self.info.store_path} any more")

    async def _next_candidate(self, last_resort: bool = True) -> Candidate | None:
        """Peers that answered the narinfo first, then whoever the sources name now; then, as a
        `last_resort` rather than no peer at all, peers in backoff (one that restarted is often the
        only one left), never banned ones."""
        while True:
            while self._queue:
                candidate = self._queue.pop(0)
                if not self._askable(candidate.peer_id):
                    continue
                if not self.peers.reputation.available(candidate.peer_id):
                    self._backed_off.append(candidate)
                    continue
                return self._asked(candidate)
            if not self._looked_up:
                self._looked_up = True
                self._queue = await self.peers.candidates(self.info.store_path.hash_part, fresh=True,
                                                           with_backoff=True)
                continue
            while last_resort and self._backed_off:
                candidate = self._backed_off.pop(0)
                if self._askable(candidate.peer_id):
                    return self._asked(candidate)
            return None

    def _askable(self, peer_id: str) -> bool:
        """Not banned, and not asked yet, or asked before it last restarted."""
        reputation = self.peers.reputation
        return self._tried.get(peer_id) != reputation.restarts(peer_id) and not reputation.banned(peer_id)

    def _asked(self, candidate: Candidate) -> Candidate:
        self._tried[candidate.peer_id] = self.peers.reputation.restarts(candidate.peer_id)
        return candidate

    async def _replacement(self, start: int, end: int, until: float) -> PeerRange | None:
        """The range from the next holder; when none is left, the holders looked up again every
        RELOOK seconds until `until`: a holder killed and started again is back within seconds, and
        news of its new process makes it worth asking again (at least one try, whatever the time)."""
        while (replacement := await self._open_next(start, end)) is None and time.monotonic() + RELOOK < until:
            await asyncio.sleep(RELOOK)
            self._looked_up = False
        return replacement

    async def _open_next(self, start: int, end: int) -> PeerRange | None:
        """The range from the first peer that starts sending it. A peer that fails or lacks the NAR
        passes the turn at once; one still silent after stall_timeout is joined by the next
        candidate, and the first to answer wins. The others are stopped, and go back to the front of
        the queue: they did not fail, and may take over later."""
        opening: dict[asyncio.Task[PeerRange | None], Candidate] = {}
        more = True
        try:
            while True:
                if more and (candidate := await self._next_candidate()) is not None:
                    opening[asyncio.create_task(self._try_open(candidate, start, end))] = candidate
                else:
                    more = False
                if not opening:
                    return None
                done, _ = await asyncio.wait(opening, timeout=self.settings.stall_timeout if more else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                opened = [(task.result(), opening.pop(task)) for task in done]
                if winners := [source for source, _ in opened if source is not None]:
                    for source in winners[1:]:
                        await self._put_back(source.candidate, source)
                    return winners[0]
        finally:
            for task, candidate in opening.items():
                if (late := await _cancel(task)) is not None:  # None: it failed, or lacks the NAR, after all
                    await self._put_back(candidate, late)

    async def _put_back(self, candidate: Candidate, opened: object) -> None:
        """A peer that lost a race for a range (`opened` stopped or the range it opened): it did
        not fail, so it is first in line for the next."""
        if isinstance(opened, PeerRange):
            await opened.close()
        self._tried.pop(candidate.peer_id, None)
        self._queue.insert(0, candidate)

    async def _try_open(self, candidate: Candidate, start: int, end: int) -> PeerRange | None:
        with contextlib.suppress(NarFetchError):  # counted by _open
            return await self._open(candidate, start, end)
        return None

    async def _open(self, candidate: Candidate, start: int, end: int) -> PeerRange | None:
        """A range from one peer; None when it does not have the NAR; NarFetchError when it fails."""
        try:
            return await open_range(self.peers, candidate, self.info, start, end, self.settings, self._on_wire)
        except NarFetchError:
            self._holder_failed = True
            raise

    def _on_wire(self, size: int) -> None:
        self.wire_bytes += size
        self._unthrottled += size
        self.peers.metrics.peer_wire_bytes.labels("received").inc(size)

    async def _received(self, chunk: bytes) -> None:
        await self._under_cap()
        self.peers.metrics.peer_received_bytes.inc(len(chunk))

    async def _under_cap(self) -> None:
        """The download cap applies to what crossed the network (zstd blocks, not their contents)."""
        wire_bytes, self._unthrottled = self._unthrottled, 0
        await self.peers.downloads.take(wire_bytes)

    async def _sequential(self, source: PeerRange, position: int = 0, end: int | None = None
                          ) -> AsyncIterator[bytes]:
        """One peer at a time; the next one resumes where a failed or stalled one stopped."""
        end = self.info.nar_size if end is None else end
        while position < end:
            outcome = await self._read_or_replace(source, position, end)
            if isinstance(outcome, PeerRange):
                source = outcome
                self._resumed(source, position)
                continue
            await self._received(outcome)
            self._contributed(source.candidate.peer_id, len(outcome))
            position += len(outcome)
            yield outcome
        await source.close()

    async def _read_or_replace(self, source: PeerRange, position: int, end: int) -> bytes | PeerRange:
        """The source's next chunk; or, when it fails, the range from the next holder; or, when it
        stays silent for stall_timeout and the next holder starts sending first, that holder's range.
        A slow source that answers first keeps its place; alone, it has its read_timeout, while the
        holders are looked up again in case one comes back."""
        until = time.monotonic() + self.settings.read_timeout
        read = asyncio.ensure_future(source.read())
        takeover: asyncio.Task[PeerRange | None] | None = None
        try:
            done, _ = await asyncio.wait({read}, timeout=self.settings.stall_timeout)
            if not done:
                takeover = asyncio.create_task(self._replacement(position, end, until))
                await asyncio.wait({read, takeover}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done() and (replacement := takeover.result()) is not None:
                    takeover = None
                    self.peers.failed(source.candidate.peer_id, "nar", "stalled",
                                      f"silent for {self.settings.stall_timeout:g}s at byte {position}")
                    await _cancel(read)  # first: the stream cannot be stopped while a read holds it
                    await source.close()
                    return replacement
            try:
                return await read
            except NarFetchError as error:
                self.peers.failed(source.candidate.peer_id, "nar", "failed", str(error))
            replacement = await (takeover or self._replacement(position, end, until))
            takeover = None
            if replacement is None:
                raise NarFetchError(f"no peer could send the rest of {self.info.store_path} after byte {position}")
            return replacement
        finally:
            await _cancel(read)
            if takeover is not None and isinstance(unused := await _cancel(takeover), PeerRange):
                await self._put_back(unused.candidate, unused)  # it opened a range as the source answered

    def _contributed(self, peer: str, count: int) -> None:
        self.contributed[peer] += count
        if self.fetch is not None:
            self.fetch.credit(peer, count)

    def _resumed(self, source: PeerRange, position: int) -> None:
        self.resumes += 1
        self.peers.metrics.nar_resumes.inc()
        log.info("resuming nar path=%s peer=%s at byte %d of %d", self.info.store_path,
                 source.candidate.peer_id[:10], position, self.info.nar_size)

    async def _pieces(self, first: PeerRange) -> AsyncIterator[bytes]:
        """Several peers at once into the temporary file; the front is read as it completes."""
        size, fd = self.info.nar_size, self._fd
        self.peers.metrics.nar_split_transfers.inc()
        self._all[0].owner = first.candidate.peer_id
        self._spawn(first.candidate, self._all[0], first)
        delivered = 0
        try:
            while delivered < size:
                available = self._complete_front()
                if available > delivered:
                    chunk = os.pread(fd, min(available - delivered, READ_SIZE), delivered)
                    delivered += len(chunk)
                    yield chunk
                    continue
                if self._disk_error:
                    raise NarFetchError(f"the temporary file of {self.info.store_path} failed: {self._disk_error}")
                self._take_from_stalled()
                await self._add_workers()
                if not self._workers:
                    raise NarFetchError(f"every peer failed to send {self.info.store_path} at byte {delivered}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(0.25, self.settings.stall_timeout)):
                        await self._changed.wait()
                self._changed.clear()
        finally:
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    def _complete_front(self) -> int:
        """How many bytes from the start of the NAR are in the file."""
        for piece in self._all:
            if piece.remaining:
                return piece.position
        return self.info.nar_size

    def _claim(self, peer: str, dry_run: bool = False) -> _Piece | None:
        """The first piece nobody works on, else the second half of the largest running one."""
        free = next((p for p in self._all if p.owner is None and p.remaining), None)
        if free is None:
            running = max((p for p in self._all if p.owner is not None), key=lambda p: p.remaining, default=None)
            if running is None or running.remaining < 2 * self.settings.min_steal:
                return None
            if dry_run:
                return running
            middle = running.position + running.remaining // 2
            free = _Piece(middle, running.end)
            running.end = middle
            bisect.insort(self._all, free, key=lambda p: p.start)
        if not dry_run:
            free.owner, free.last_progress = peer, time.monotonic()
        return free

    def _spawn(self, candidate: Candidate, piece: _Piece, source: PeerRange | None = None) -> None:
        self._workers[candidate.peer_id] = asyncio.create_task(self._worker(candidate, piece, source))

    async def _add_workers(self) -> None:
        """Up to max_sources peers while there is work: idle ones first, then new ones."""
        while len(self._workers) < self.settings.max_sources and self._claim("", dry_run=True):
            candidate = self._idle.pop(0) if self._idle else await self._next_candidate(not self._workers)
            if candidate is None:
                return
            if (piece := self._claim(candidate.peer_id)) is None:
                self._idle.append(candidate)
                return
            self._spawn(candidate, piece)

    async def _worker(self, candidate: Candidate, piece: _Piece | None, source: PeerRange | None) -> None:
        """One peer's pieces, one after another, until there is nothing left to take."""
        peer = candidate.peer_id
        try:
            while piece is not None:
                if source is None:
                    try:
                        source = await self._open(candidate, piece.position, piece.end)
                    except NarFetchError:
                        return  # counted by _open
                    if source is None:
                        return  # this peer does not have the NAR after all
                    if piece.written:
                        self._resumed(source, piece.position)
                piece.streaming, piece.last_progress = True, time.monotonic()
                await self._fill(piece, source)
                piece.owner, source = None, None
                piece = self._claim(peer)
            self._idle.append(candidate)
        except NarFetchError as error:
            self.peers.failed(peer, "nar", "failed", str(error))
        except OSError as error:  # writing the temporary file: not the peer's fault, the transfer's end
            self._disk_error = error
        finally:
            if piece is not None:
                piece.owner, piece.streaming = None, False
            del self._workers[peer]
            self._changed.set()

    async def _fill(self, piece: _Piece, source: PeerRange) -> None:
        """Write the peer's bytes at their offset until the piece is whole (it may shrink meanwhile).
        The write is synchronous: it lands in the page cache, and no other peer can touch the
        piece in the middle of it."""
        peer = source.candidate.peer_id
        while piece.remaining:
            chunk = await source.read(piece.remaining)
            piece.last_progress = time.monotonic()  # before the download cap's wait, which is not silence
            await self._received(chunk)
            used = memoryview(chunk)[: piece.remaining]  # it may have shrunk while we waited
            _write_all(self._fd, used, piece.position)
            self._record_write(piece.position, len(used), source.candidate)
            piece.written += len(used)
            self._contributed(peer, len(used))
            self._changed.set()
        if source.position < source.end:
            await source.close()

    def _record_write(self, position: int, size: int, candidate: Candidate) -> None:
        last = self._written_by[-1] if self._written_by else None
        if last and last[1] == position and last[2] is candidate:
            self._written_by[-1] = (last[0], position + size, candidate)
        else:
            self._written_by.append((position, position + size, candidate))

    def _take_from_stalled(self) -> None:
        """A peer silent for stall_timeout while another delivered loses its piece and its turn."""
        now = time.monotonic()
        running = [p for p in self._all if p.owner is not None and p.streaming]
        if not any(now - p.last_progress < self.settings.stall_timeout for p in running) and not self._idle:
            return  # nobody else is doing better
        for piece in running:
            task = self._workers.get(piece.owner)
            if now - piece.last_progress >= self.settings.stall_timeout and task and not task.cancelling():
                peer = piece.owner
                task.cancel()
                self.peers.failed(peer, "nar", "stalled",
                                        f"silent for {now - piece.last_progress:.1f}s at byte {piece.position}")

    async def _verified(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Hash in NAR order and hold the last chunk back until the whole NAR checks out."""
        info, peers = self.info, self.peers
        sha256, received, held = hashlib.sha256(), 0, b""
        outcome = "failed"
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    sha256.update(chunk)
                    received += len(chunk)
                    if held:
                        yield held
                    held = chunk
            if received != info.nar_size or sha256.digest() != info.nar_hash:
                outcome = "mismatch"
                await self._mismatch()
                raise NarFetchError(f"the NAR of {info.store_path} from {self._sources()} does not match its NarHash")
            outcome = "complete"
            peers.metrics.peer_fetches.labels("nar", "ok").inc()
            seconds = time.monotonic() - self.started
            log.info("fetched nar path=%s peers=%s bytes=%d seconds=%.3f mib_per_s=%.1f resumes=%d wire_bytes=%d",
                     info.store_path, self._sources(), received, seconds,
                     received / (1 << 20) / max(seconds, 1e-6), self.resumes, self.wire_bytes)
            yield held
        finally:
            if self._file:
                self._file.close()
            if self.fetch is not None:
                self.fetch.detail = ("the NAR did not match its NarHash" if outcome == "mismatch"
                                     else self._detail(received))

    async def _unverified(self, chunks: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
        received, outcome = 0, "failed"
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    received += len(chunk)
                    yield chunk
            outcome = "complete"
            self.peers.metrics.peer_fetches.labels("nar-range", "ok").inc()
        finally:
            log.info("fetched nar range path=%s bytes=%d-%d peers=%s outcome=%s", self.info.store_path, start,
                     end - 1, self._sources(), outcome)
            if self.fetch is not None:
                self.fetch.detail = ", ".join(filter(None, (f"bytes {start}-{end - 1}", self._detail(received))))

    async def _mismatch(self) -> None:
        """Mark the peers that lied: one peer alone is the liar; of several in a split transfer, the
        audit tells. Liars are banned for LIAR_BAN; when nobody can tell (a resumed transfer), all
        contributors only back off."""
        peers = self.peers
        peers.metrics.verification_failures.labels("nar").inc()
        peers.metrics.activity.count("verification_failures")
        if len(self.contributed) == 1:
            liars = set(self.contributed)
        elif self._file:
            try:
                async with asyncio.timeout(max(60.0, self.info.nar_size / (1 << 20))):  # at 1 MiB/s at worst
                    liars = await self._audit()
            except TimeoutError:
                liars = set()
        else:
            liars = set()
        for peer in liars:
            peers.reputation.ban(peer, LIAR_BAN, "sent bytes that do not match the NarHash")
        for peer in liars or self.contributed:
            peers.failed(peer, "nar", "mismatch", "sent bytes that do not match the NarHash")
            peers.endpoint.forget(peer)
        self.on_mismatch()
        log.warning("NAR hash mismatch path=%s peers=%s liars=%s: transfer aborted", self.info.store_path,
                    self._sources(), ", ".join(p[:10] for p in liars) or "unknown")

    async def _audit(self) -> set[str]:
        """Who sent wrong bytes into a split NAR: fetch it whole from one contributor at a time; the
        first copy that matches the NarHash is compared with what each peer wrote. Costs one more
        NAR, and only after a peer lied; a peer whose own whole copy fails is a liar too."""
        liars: set[str] = set()
        size, wrote = self.info.nar_size, self._written_by
        contributors = list({c.peer_id: c for _, _, c in wrote}.values())
        for candidate in contributors[:self.settings.max_sources + 1]:
            differs: set[str] = set()
            sha256, position = hashlib.sha256(), 0
            try:
                if (source := await self._open(candidate, 0, size)) is None:
                    continue
                while position < size:
                    chunk = await source.read()
                    await self._under_cap()
                    sha256.update(chunk)
                    differs.update(self._differing(chunk, position))
                    position += len(chunk)
            except NarFetchError:
                continue
            if sha256.digest() == self.info.nar_hash:
                return liars | differs
            liars.add(candidate.peer_id)
        return liars

    def _differing(self, chunk: bytes, position: int) -> set[str]:
        """Peers whose writes into the file differ from `chunk`, which belongs at `position`."""
        end, found = position + len(chunk), set()
        for start, stop, candidate in self._written_by:
            low, high = max(start, position), min(stop, end)
            if low < high and os.pread(self._fd, high - low, low) != chunk[low - position: high - position]:
                found.add(candidate.peer_id)
        return found

    def _sources(self) -> str:
        """Who supplied how much, for logs: `ab12cd34ef` alone, else
        `ab12cd34ef:60%,0123456789:40%`."""
        if len(self.contributed) == 1:
            return next(iter(self.contributed))[:10]
        total = sum(self.contributed.values()) or 1
        return ",".join(f"{peer[:10]}:{count * 100 // total}%" for peer, count in self.contributed.most_common())

    def _detail(self, received: int) -> str:
        """For the dashboard: how many peers, resumes, and what zstd saved."""
        parts = [f"{len(self.contributed)} peers"] if len(self.contributed) > 1 else []
        if self.resumes:
            parts.append(f"{self.resumes} resumed")
        if self.wire_bytes and self.wire_bytes < 0.95 * received:
            parts.append(f"zstd {received / self.wire_bytes:.1f}x")
        return ", ".join(parts)


async def open_range(peers: Peers, candidate: Candidate, info: PathInfo, start: int, end: int,
                     settings: TransferSettings, on_wire: Callable[[int], None], growing: bool = True
                     ) -> PeerRange | None:
    """Bytes [start, end) of a path's NAR from one peer (`growing`: or from the copy it is still
    pulling through), over the fast path when the peer offers it; None when it does not have the NAR;
    NarFetchError (counted against the peer) when it fails to start sending them."""
    began = time.monotonic()
    zstd = zstd_request(settings.compression, candidate)
    answer = await _request_range(peers, candidate, info, start, end, settings, growing, zstd,
                                  _may_take_fast_path(peers, candidate, zstd))
    if answer is None:
        return None
    recv, blocks, offer = answer
    reopen = functools.partial(_rest_over_iroh, peers, candidate, info, end, settings, growing, zstd)
    if offer is not None:
        try:
            recv = await _fast_path(peers, candidate, info, offer, start, end)
        except FastPathError as error:
            log.info("fast path failed peer=%s: %s; going on over iroh", candidate.peer_id[:10], error)
            recv, blocks = await reopen(start)
    peers.reputation.succeeded(candidate.peer_id, time.monotonic() - began)
    return PeerRange(candidate, recv, start, end, settings.read_timeout, blocks, on_wire,
                     reopen if offer is not None else None)


async def _request_range(peers: Peers, candidate: Candidate, info: PathInfo, start: int, end: int,
                         settings: TransferSettings, growing: bool, zstd: str | None, http: bool
                         ) -> tuple[iroh.RecvStream, bool, dict[str, Any] | None] | None:
    """The peer's answer to a range request over iroh: the stream, whether it carries zstd blocks and
    the fast path's offer, if any; None when it does not have the NAR."""
    peer = candidate.peer_id
    request = wire.NarRequest(info.store_path.hash_part, nix32.encode(info.nar_hash), start, end - start,
                              zstd, growing, settings.name, http)
    try:
        async with asyncio.timeout(peers.query_timeout):
            stream, header = await peers.endpoint.request(candidate.address, wire.NAR_ALPN, request.to_frame(),
                                                          wire.read_frame)
    except (TimeoutError, PeerUnreachable, iroh.IrohError, wire.WireError) as error:
        peers.failed(peer, "nar", "unreachable", describe(error))
        raise NarFetchError(describe(error)) from None
    if header.get("status") != "ok":
        peers.metrics.peer_fetches.labels("nar", "not-found").inc()
        return None
    if header.get("size") != end - start:
        peers.failed(peer, "nar", "rejected", f"announced {header.get('size')} bytes, not {end - start}")
        raise NarFetchError("wrong size")
    blocks = header.get("encoding") == wire.ZSTD_BLOCKS
    if blocks and request.zstd is None:
        peers.failed(peer, "nar", "rejected", "compressed although not asked to")
        raise NarFetchError("unasked compression")
    offer = header.get("http")
    if offer is not None and not (http and not blocks and isinstance(offer, dict)):
        peers.failed(peer, "nar", "rejected", "offered the fast path although not asked to")
        raise NarFetchError("unasked fast path")
    return stream.recv(), blocks, offer


async def _rest_over_iroh(peers: Peers, candidate: Candidate, info: PathInfo, end: int, settings: TransferSettings,
                          growing: bool, zstd: str | None, position: int) -> tuple[iroh.RecvStream, bool]:
    """Bytes [position, end) from the same peer over iroh, after its fast path failed (which is not
    tried again for a while)."""
    peers.fast_path.broke(candidate.peer_id)
    peers.metrics.fast_path_ranges.labels("fallback").inc()
    answer = await _request_range(peers, candidate, info, position, end, settings, growing, zstd, http=False)
    if answer is None:
        peers.failed(candidate.peer_id, "nar", "failed", "lost the NAR between the fast path and iroh")
        raise NarFetchError("the NAR is gone")
    recv, blocks, _ = answer
    return recv, blocks


def _may_take_fast_path(peers: Peers, candidate: Candidate, zstd: str | None) -> bool:
    """Whether to ask for the fast path: on here, a peer with a nearby address whose fast path has
    not failed lately, and bytes that need no compression (not a slow link)."""
    return (peers.fast_path is not None and zstd != "prefer" and peers.fast_path.usable(candidate.peer_id)
            and bool(nearby_hosts(candidate.address.direct)))


async def _fast_path(peers: Peers, candidate: Candidate, info: PathInfo, offer: dict[str, Any],
                     start: int, end: int) -> HttpBody:
    """The range from the peer's listener: first at the address iroh reaches it by directly, then at
    the nearby addresses it announces (the other IP family, when the listener has one only), but a
    loopback address only when iroh reaches the peer on loopback: a liar must not point this host at
    a service of its own."""
    port, ticket = offer.get("port"), offer.get("ticket")
    if not (isinstance(port, int) and 0 < port < 65536 and isinstance(ticket, str) and len(ticket) < 256):
        raise FastPathError(f"a malformed offer {str(offer)[:100]}")
    path = peers.endpoint.direct_host(candidate.peer_id, wire.NAR_ALPN)
    local = path is not None and ipaddress.ip_address(path).is_loopback
    hosts = [host for host in nearby_hosts([*([f"[{path}]:0"] if path else []), *candidate.address.direct])
             if local or not ipaddress.ip_address(host).is_loopback]
    if not hosts:
        raise FastPathError("no nearby address to reach it by")
    url = f"/store/nar/{nix32.encode(info.nar_hash)}.nar?hash={info.store_path.hash_part}"
    try:
        async with asyncio.timeout(peers.query_timeout):
            body = await peers.fast_path.open(hosts, port, ticket, url, start, end)
    except TimeoutError:
        raise FastPathError(f"no answer within {peers.query_timeout:g} s") from None
    peers.metrics.fast_path_ranges.labels("ok").inc()
    return body


def zstd_request(mode: str, candidate: Candidate) -> str | None:
    """What to ask a peer for: nothing with `never`; `prefer` with `always` and, with `auto`, from a
    peer with no address on this machine or a private network (its link is likely slow); else
    `accept`, leaving it to a peer whose own upload is slow."""
    if mode == "never":
        return None
    nearby = candidate.source in ("lan", "static") or any(map(is_nearby, candidate.address.direct))
    if mode == "always" or not nearby:
        return "prefer"
    return "accept"


async def _cancel(task: asyncio.Future) -> object:
    """Cancel the task and wait for it; its result or exception if it had already finished."""
    task.cancel()
    [outcome] = await asyncio.gather(task, return_exceptions=True)
    return outcome


def _write_all(fd: int, data: memoryview, position: int) -> None:
    while data:
        written = os.pwrite(fd, data, position)
        data, position = data[written:], position + written


def describe(error: BaseException) -> str:
    if isinstance(error, iroh.IrohError):
        return error.message().splitlines()[0]
    return str(error) or type(error).__name__
