"""What the host offers as a substituter: paths it can hand to Nix, signed with its key."""

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from ..nix import nar, nix32
from ..nix.derivation import Derivation, hash_modulo
from ..nix.listing import render, tree_listing
from ..nix.narinfo import NarInfo, PathInfo
from ..nix.realisation import BuildTraceEntry, Realisation
from ..nix.signing import Info, SecretKey, add_signature
from ..nix.storepath import StorePath
from .held import Growing, HeldPaths
from .listings import Listings
from .local import MAX_LOG, LocalStore
from .narcache import NarCache, NarCacheWriter

log = logging.getLogger(__name__)

CACHE_ENTRIES = 16384
RANGE_CURSORS = 8  # NAR walks kept where the last range ended, for the next piece of a split
RANGE_INDEXES = 4  # local NARs kept indexed by segment, so a range need not walk the files before it...
MAX_INDEXED = 300_000  # ...unless they have more segments than this (three a file, ~100 bytes each)
T = TypeVar("T")


def nar_url(info: PathInfo) -> str:
    """The NarHash names the NAR so a rebuilt path never aliases an old one; the hash part finds it."""
    return f"nar/{nix32.encode(info.nar_hash)}.nar?hash={info.store_path.hash_part}"


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def narinfo_text(info: PathInfo) -> bytes:
    """Rendered once per path info: the substituter hands out the same info until the store changes."""
    return NarInfo.uncompressed(info, nar_url(info)).to_text().encode()


class Unavailable(Exception):
    """The store cannot answer right now (its database is locked, missing or corrupt)."""


class NarUnavailable(OSError):
    """A NAR that cannot be sent: its path is gone, or no peer could start sending it."""


class HoldersFailed(NarUnavailable):
    """Peers hold the path but none of them answered or sent it: unlike a miss, worth asking again in
    a moment (a holder that was killed or restarted is back within seconds)."""


class Network(Protocol):
    """Where the paths this host lacks come from: the peer network (swarm.remote.RemoteStore)."""

    async def find(self, hash_part: str, again: bool = False) -> PathInfo | None:
        """The path's info as accepted from a peer (trusted signatures only), or None when no peer
        has it; raises HoldersFailed when the peers that may have it did not answer. `again`: a miss
        remembered from a moment ago does not answer (Nix holds a narinfo, and asks for its NAR)."""

    async def open_nar(self, info: PathInfo) -> AsyncIterator[bytes]:
        """The verified NAR of a path `find` returned; raises NarUnavailable when it cannot start
        (HoldersFailed when its holders failed)."""

    async def open_range(self, info: PathInfo, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the NAR of a path `find` returned, which no hash can check (Nix
        checks the NAR it makes of them); raises as `open_nar` does."""

    async def build_log(self, drv: StorePath) -> bytes | None:
        """A peer's build log of the derivation (at most MAX_LOG bytes), or None."""

    async def realisation(self, id_: str) -> Realisation | None:
        """A peer's realisation with only its trusted signatures (at least one), or None."""


class Substituter:
    def __init__(self, local: LocalStore, key: SecretKey | None, nar_cache: NarCache | None = None,
                 remote: Network | None = None, held: HeldPaths | None = None) -> None:
        self.local = local
        self.key = key
        self.nar_cache = nar_cache
        self.remote = remote
        self.held = held  # paths pulled through from the upstream, outside the Nix store
        # Nix asks twice (HEAD, then GET) and a fleet asks for the same paths over and over.
        # Signed infos are kept until the database changes: a database read costs a thread hop.
        self._sign = functools.lru_cache(maxsize=CACHE_ENTRIES)(key.sign) if key else None
        self._cache: OrderedDict[str, PathInfo] = OrderedDict()
        self._cache_generation: object = None
        self._cursors: OrderedDict[bytes, nar.SegmentCursor] = OrderedDict()
        self.listings = Listings()
        self._indexes: OrderedDict[bytes, nar.SegmentIndex] = OrderedDict()  # by NarHash, walker thread only
        self._walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-walker")
        self._cache_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-cache")

    async def lookup(self, hash_part: str, again: bool = False) -> PathInfo | None:
        """Signed info for a path Nix can have: from the local store, else from the peer network
        (which raises HoldersFailed when the peers that may have it failed); `again` as `Network.find`."""
        info = await self.path_info(hash_part)
        if info is None and self.remote is not None:
            found = await self.remote.find(hash_part, again)
            if found is not None:
                info = self._signed(found)
        return info

    async def open_nar(self, info: PathInfo) -> AsyncIterator[nar.Segment]:
        """The NAR of a path `lookup` returned: local if the store has it, else from a peer.

        Raises NarUnavailable when it cannot start.
        """
        if await self.path_info(info.store_path.hash_part) is not None:
            return self.nar(info)
        if self.remote is None:
            raise NarUnavailable(f"{info.store_path} is not in this host's store any more")
        return self.listings.proving(await self.remote.open_nar(info), info.nar_hash)

    async def open_range(self, info: PathInfo, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the NAR of a path `lookup` returned: cut from the local tree, else
        fetched from peers (unverified: a part of a NAR has no hash to check). Raises as `open_nar`."""
        if await self.path_info(info.store_path.hash_part) is not None:
            return self.nar_chunks(info, start, end)
        if self.remote is None:
            raise NarUnavailable(f"{info.store_path} is not in this host's store any more")
        return await self.remote.open_range(info, start, end)

    async def listing(self, hash_part: str) -> bytes | None:
        """The `.ls` of a path: a local path's from its tree, a peer's only once proven (its NAR came
        through here and matched its NarHash); None otherwise."""
        info = await self.lookup(hash_part)
        if info is None:
            return None
        if (text := self.listings.get(info.nar_hash)) is not None:
            return text
        if await self.path_info(hash_part) is None:
            return None  # a peer's path whose NAR has not been through here: nothing proves a listing
        root = self.local.real_path(info.store_path)
        try:
            text = await asyncio.get_running_loop().run_in_executor(self._walker, lambda: render(tree_listing(root)))
        except OSError as error:  # NarError included: the path went away, or changed, as it was walked
            log.warning("cannot list path=%s error=%s", info.store_path, error)
            return None
        self.listings.put(info.nar_hash, text)
        return text

    async def build_log(self, drv: StorePath) -> bytes | None:
        """The build log of a derivation: this host's, else a peer's; None when nobody has it."""
        text = await asyncio.to_thread(self.local.read_build_log, drv, MAX_LOG)
        if text is None and self.remote is not None:
            text = await self.remote.build_log(drv)
        return text

    async def local_realisation(self, id_: str) -> Realisation | None:
        """A realisation from this host's database, signed by this host too."""
        try:
            found = await self.local.realisation(id_)
        except sqlite3.Error as error:
            raise Unavailable(f"store database: {error}") from error
        return self._signed(found) if found else None

    async def realisation(self, id_: str) -> Realisation | None:
        """A realisation this host built, else one a peer has and a trusted key signed; signed by this
        host too, as Nix 2.8 does not check it."""
        found = await self.local_realisation(id_)
        if found is None and self.remote is not None and (found := await self.remote.realisation(id_)):
            found = self._signed(found)
        return found

    async def build_trace(self, drv: StorePath, output: str) -> BuildTraceEntry | None:
        """A realisation as current Nix asks for it (`build-trace-v2/`), keyed by derivation path: for
        a derivation in this store, its hash modulo (from its .drv and its inputs', which the store
        holds with it) names the realisation. Signed by this host alone: the signatures realisations
        carry cover Nix 2.8's fingerprint, not this one."""
        info = await self.path_info(drv.hash_part)
        if info is None or info.store_path != drv:
            return None

        def read(path: str) -> Derivation:
            return Derivation.parse((self.local.real_store_dir / StorePath.parse(path).basename).read_text())

        try:
            hashes = await asyncio.to_thread(hash_modulo, drv.full(self.local.store_dir), read)
        except (OSError, ValueError, RecursionError) as error:  # DerivationError included
            log.warning("cannot hash derivation drv=%s error=%s", drv, error)
            return None
        found = await self.realisation(f"sha256:{hashes[output]}!{output}") if output in hashes else None
        return self._signed(BuildTraceEntry(drv, output, found.out_path)) if found else None

    def _signed(self, info: Info) -> Info:
        return add_signature(info, self._sign(info.fingerprint())) if self._sign else info

    async def path_info(self, hash_part: str) -> PathInfo | None:
        """Signed info for a path this host holds: in the local store, else among the held paths;
        None otherwise. `hash_part` must be validated."""
        info = self._cached(hash_part)
        if info is None:
            try:
                info = await self.local.query(hash_part)
            except sqlite3.Error as error:
                raise Unavailable(f"store database: {error}") from error
            if info is None:
                return self._held(hash_part)
            info = self._signed(info)
            self._remember(hash_part, info)
        return self._on_disk(hash_part, info)

    def path_info_now(self, hash_part: str) -> PathInfo | None:
        """What `path_info` answers when that needs no database read (a path looked up since the
        database last changed); None otherwise."""
        info = self._cached(hash_part)
        return None if info is None else self._on_disk(hash_part, info)

    def _on_disk(self, hash_part: str, info: PathInfo) -> PathInfo | None:
        # The database can outlive the files (or vice versa for a moment during garbage collection).
        if not self.local.has_files(info.store_path):
            return self._held(hash_part)
        if self.held is not None and self.held.get(hash_part) is not None:
            self.held.drop(hash_part)  # Nix imported it: the store serves it from now on
        return info

    def _held(self, hash_part: str) -> PathInfo | None:
        info = self.held.get(hash_part) if self.held is not None else None
        return self._signed(info) if info is not None else None

    def in_flight(self, hash_part: str) -> Growing | None:
        """A NAR still downloading from the upstream: peers may follow it, Nix waits for it whole."""
        return self.held.growing(hash_part) if self.held is not None else None

    def _cached(self, hash_part: str) -> PathInfo | None:
        generation = self.local.generation()
        if generation != self._cache_generation:
            self._cache.clear()
            self._cache_generation = generation
            return None
        info = self._cache.get(hash_part)
        if info is not None:
            self._cache.move_to_end(hash_part)
        return info

    def _remember(self, hash_part: str, info: PathInfo) -> None:
        self._cache[hash_part] = info
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def nar(self, info: PathInfo) -> AsyncIterator[nar.Segment]:
        """The NAR of a path returned by `path_info`: bytes chunks and large files to send whole.

        The tree walk and file reads run on one dedicated thread: the event loop never waits on
        the file system, and walking overlaps with sending. One thread because the walk is
        syscall-bound; more threads only fight over the GIL and the two cores of a small host.
        A NAR made only of small files is also written to the NAR cache on the way.
        """
        whole = self._whole_file(info)
        if whole:
            yield nar.FileContents(whole, info.nar_size)
            return
        cache = self.nar_cache
        writer = cache.writer(info.nar_hash, info.nar_size) if cache else None
        walk = nar.coalesce(nar.segments(self.local.real_path(info.store_path)))
        async with contextlib.aclosing(self._on_walker(_teed(walk, writer))) as parts:
            async for part in parts:
                yield part
        if writer and await asyncio.get_running_loop().run_in_executor(self._cache_writer, writer.finish):
            cache.publish(writer)  # finish() syncs to disk: on its own thread, not the walker's

    async def nar_chunks(self, info: PathInfo, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The NAR, or its bytes [start, end), as bytes only, for transports without zero-copy
        (peers over iroh). A range is cut from the tree (or the cached NAR) without reading what
        lies before it. A NAR still downloading is followed as it grows."""
        end = info.nar_size if end is None else end
        growing = self.in_flight(info.store_path.hash_part)
        if growing is not None and growing.info.nar_hash == info.nar_hash:
            async with contextlib.aclosing(growing.read(start, end)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        if (start, end) != (0, info.nar_size):
            cursor = self._cursors.pop(info.nar_hash, None)
            if cursor is None or cursor.offset > start:
                if cursor:
                    self._walker.submit(cursor.close)
                whole = self._whole_file(info)
                cursor = (nar.SegmentCursor([nar.FileContents(whole, info.nar_size)]) if whole else
                          await asyncio.get_running_loop().run_in_executor(self._walker, self._range_cursor, info,
                                                                           start))
            async with contextlib.aclosing(self._on_walker(nar.byte_range(cursor, start, end))) as chunks:
                async for chunk in chunks:
                    yield chunk
            self._cursors[info.nar_hash] = cursor  # only after a whole range: the walk is where it says
            while len(self._cursors) > RANGE_CURSORS:
                self._walker.submit(self._cursors.popitem(last=False)[1].close)
            return
        async with contextlib.aclosing(self.nar(info)) as parts:
            async for part in parts:
                if isinstance(part, bytes):
                    yield part
                    continue
                async with contextlib.aclosing(self._on_walker(nar.read_file(part))) as chunks:
                    async for chunk in chunks:
                        yield chunk

    def _whole_file(self, info: PathInfo) -> bytes | None:
        """A file that holds the path's whole NAR: a held path's, else the NAR cache's copy."""
        hash_part = info.store_path.hash_part
        if self.held is not None and self.held.get(hash_part) is not None and not self.local.has_files(info.store_path):
            return self.held.nar_path(hash_part)
        return self.nar_cache.lookup(info.nar_hash, info.nar_size) if self.nar_cache else None

    def _range_cursor(self, info: PathInfo, start: int) -> "nar.SegmentCursor":  # `nar` is a method here
        """A cursor at the segment of a local NAR holding `start` (on the walker thread, which alone
        touches `_indexes`): the NARs ranges were last cut from are kept indexed, so a resumed
        download or `nix store cat`, one range after another, costs one walk of the tree in all."""
        index = self._indexes.pop(info.nar_hash, None)
        if index is None:
            parts = nar.segments(self.local.real_path(info.store_path))
            first = list(itertools.islice(parts, MAX_INDEXED + 1))
            if len(first) > MAX_INDEXED:  # too large to keep: one walk for this range
                return nar.SegmentCursor(itertools.chain(first, parts))
            index = nar.SegmentIndex(first)
        self._indexes[info.nar_hash] = index
        while len(self._indexes) > RANGE_INDEXES:
            self._indexes.popitem(last=False)
        return index.cursor(start)

    async def _on_walker(self, parts: Iterator[T]) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        try:
            while (part := await loop.run_in_executor(self._walker, next, parts, None)) is not None:
                yield part
        finally:
            self._walker.submit(parts.close)  # after any next() still running: same thread, in order

    def close(self) -> None:
        self._walker.shutdown(wait=False, cancel_futures=True)
        self.listings.close()
        self._cache_writer.shutdown(wait=True)


def _teed(parts: Iterator[nar.Segment], writer: NarCacheWriter | None) -> Iterator[nar.Segment]:
    """Pass parts through, copying bytes into `writer`; a large file makes the NAR not worth caching
    (it is sent zero-copy anyway), and any early exit drops the copy."""
    complete = False
    try:
        for part in parts:
            if writer:
                if isinstance(part, bytes):
                    writer.write(part)
                else:
                    writer.abort()
                    writer = None
            yield part
        complete = True
    finally:
        if writer and not complete:
            writer.abort()
