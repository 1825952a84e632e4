"""What the host offers as a substituter: paths it can hand to Nix, signed with its key."""

import asyncio
import contextlib
import functools
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from ..nix import nar, nix32
from ..nix.narinfo import NarInfo, PathInfo
from ..nix.signing import Info, SecretKey, add_signature
from .held import Growing, HeldPaths
from .local import LocalStore
from .narcache import NarCache, NarCacheWriter

CACHE_ENTRIES = 16384
RANGE_CURSORS = 8  # NAR walks kept where the last range ended, for the next piece of a split
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

    async def find(self, hash_part: str) -> PathInfo | None:
        """The path's info as accepted from a peer (trusted signatures only), or None when no peer
        has it; raises HoldersFailed when the peers that may have it did not answer."""

    async def open_nar(self, info: PathInfo) -> AsyncIterator[bytes]:
        """The verified NAR of a path `find` returned; raises NarUnavailable when it cannot start
        (HoldersFailed when its holders failed)."""


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
        self._walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-walker")
        self._cache_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-cache")

    async def lookup(self, hash_part: str) -> PathInfo | None:
        """Signed info for a path Nix can have: from the local store, else from the peer network
        (which raises HoldersFailed when the peers that may have it failed)."""
        info = await self.path_info(hash_part)
        if info is None and self.remote is not None:
            found = await self.remote.find(hash_part)
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
        return await self.remote.open_nar(info)

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
                cursor = nar.SegmentCursor([nar.FileContents(whole, info.nar_size)] if whole else
                                           nar.segments(self.local.real_path(info.store_path)))
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

    async def _on_walker(self, parts: Iterator[T]) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        try:
            while (part := await loop.run_in_executor(self._walker, next, parts, None)) is not None:
                yield part
        finally:
            self._walker.submit(parts.close)  # after any next() still running: same thread, in order

    def close(self) -> None:
        self._walker.shutdown(wait=False, cancel_futures=True)
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
