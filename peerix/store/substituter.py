"""What the host offers as a substituter: paths it can hand to Nix, signed with its key."""

import asyncio
import functools
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

from ..nix import nar
from ..nix.narinfo import PathInfo
from ..nix.signing import SecretKey, add_signature
from .local import LocalStore
from .narcache import NarCache, NarCacheWriter

log = logging.getLogger(__name__)

CACHE_ENTRIES = 16384


class Unavailable(Exception):
    """The store cannot answer right now (its database is locked, missing or corrupt)."""


class Substituter:
    def __init__(self, local: LocalStore, key: SecretKey | None, nar_cache: NarCache | None = None) -> None:
        self.local = local
        self.key = key
        self.nar_cache = nar_cache
        # Nix asks twice (HEAD, then GET) and a fleet asks for the same paths over and over.
        # Signed infos are kept until the database changes: a database read costs a thread hop.
        self._sign = functools.lru_cache(maxsize=CACHE_ENTRIES)(key.sign) if key else None
        self._cache: OrderedDict[str, PathInfo] = OrderedDict()
        self._cache_generation: object = None
        self._walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-walker")
        self._cache_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nar-cache")

    async def path_info(self, hash_part: str) -> PathInfo | None:
        """Signed info for a path this host can serve, or None; `hash_part` must be validated."""
        info = self._cached(hash_part)
        if info is None:
            try:
                info = await self.local.query(hash_part)
            except sqlite3.Error as error:
                raise Unavailable(f"store database: {error}") from error
            if info is None:
                return None
            if self._sign:
                info = add_signature(info, self._sign(info.fingerprint()))
            self._remember(hash_part, info)
        # The database can outlive the files (or vice versa for a moment during garbage collection).
        return info if self.local.has_files(info.store_path) else None

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

        The tree walk and small-file reads run on one dedicated thread: the event loop never
        waits on the file system, and walking overlaps with sending. One thread because the walk
        is syscall-bound; more threads only fight over the GIL and the two cores of a small host.
        A NAR made only of small files is also written to the NAR cache on the way.
        """
        cache = self.nar_cache
        cached = cache.lookup(info.nar_hash, info.nar_size) if cache else None
        if cached:
            yield nar.FileContents(cached, info.nar_size)
            return
        writer = cache.writer(info.nar_hash, info.nar_size) if cache else None
        parts = _teed(nar.coalesce(nar.segments(self.local.real_path(info.store_path))), writer)
        loop = asyncio.get_running_loop()
        try:
            while (part := await loop.run_in_executor(self._walker, next, parts, None)) is not None:
                yield part
        finally:
            self._walker.submit(parts.close)  # after any next() still running: same thread, in order
        if writer and await loop.run_in_executor(self._cache_writer, writer.finish):  # fdatasync: not on the walker
            cache.publish(writer)

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
