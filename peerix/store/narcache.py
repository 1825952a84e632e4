"""A bounded disk cache of whole NARs for paths made of many small files.

Walking a tree of thousands of small files costs several syscalls per file; once its NAR is
cached as one file it is served with a single sendfile, as a flat-file cache would. Entries are
named by their NarHash and verified (size and SHA-256) before they are published, so an entry is
valid for as long as it exists; it is only ever served for a path the store still holds.
"""

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

from ..nix import nix32

log = logging.getLogger(__name__)

_REMEMBERED_REQUESTS = 65536


class NarCache:
    """The index of cached NARs. Used from the event loop thread only, so a lookup and the open
    that follows it cannot race an eviction; writers do their file work on another thread."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, int] = OrderedDict()  # name -> size, least recently used first
        self._total = 0
        self._requested: OrderedDict[bytes, None] = OrderedDict()  # NARs served once, not cached yet
        self.hits = self.stored = self.evicted = 0
        directory.mkdir(parents=True, exist_ok=True)
        existing = []
        for entry in os.scandir(directory):
            if entry.name.startswith(".tmp-"):
                os.unlink(entry.path)  # left over by a crash
            elif entry.name.endswith(".nar") and entry.is_file(follow_symlinks=False):
                st = entry.stat()
                existing.append((st.st_mtime_ns, entry.name, st.st_size))
        for _, name, size in sorted(existing):
            self._entries[name] = size
            self._total += size
        self._evict()

    @property
    def total_bytes(self) -> int:
        return self._total

    @property
    def entries(self) -> int:
        return len(self._entries)

    def lookup(self, nar_hash: bytes, size: int) -> bytes | None:
        """The cached NAR's file path, or None."""
        name = _name(nar_hash)
        if self._entries.get(name) != size:
            return None
        self._entries.move_to_end(name)
        self.hits += 1
        return os.fsencode(self.directory / name)

    def writer(self, nar_hash: bytes, size: int) -> "NarCacheWriter | None":
        """A writer for a NAR served for the second time: one-off requests never cost disk writes."""
        if size > self.max_bytes // 8 or _name(nar_hash) in self._entries:
            return None
        if nar_hash not in self._requested:
            self._requested[nar_hash] = None
            if len(self._requested) > _REMEMBERED_REQUESTS:
                self._requested.popitem(last=False)
            return None
        del self._requested[nar_hash]
        return NarCacheWriter(self.directory, nar_hash, size)

    def publish(self, writer: "NarCacheWriter") -> None:
        """Make a finished writer's NAR an entry (see NarCacheWriter.finish)."""
        name = _name(writer.nar_hash)
        try:
            os.replace(writer.temporary, self.directory / name)
        except OSError as error:
            log.warning("not caching NAR error=%s", error)
            return writer.abort()
        if name not in self._entries:
            self._entries[name] = writer.size
            self._total += writer.size
            self.stored += 1
        self._evict()

    def _evict(self) -> None:
        while self._total > self.max_bytes and self._entries:
            name, size = self._entries.popitem(last=False)
            self._total -= size
            self.evicted += 1
            try:
                os.unlink(self.directory / name)
            except FileNotFoundError:
                pass


class NarCacheWriter:
    """Collects a NAR as it is served, in a temporary file; `write`, `finish` and `abort` do
    blocking I/O and belong on a worker thread."""

    def __init__(self, directory: Path, nar_hash: bytes, size: int) -> None:
        self.nar_hash, self.size = nar_hash, size
        fd, self.temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self.sha256 = hashlib.sha256()
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.sha256.update(chunk)
        self.written += len(chunk)

    def finish(self) -> bool:
        """True when the NAR is complete, hashes right and is on disk: ready to publish."""
        if self.file.closed:
            return False  # aborted
        try:
            if self.written != self.size or self.sha256.digest() != self.nar_hash:
                log.warning("not caching NAR: it does not match its NarHash nar_hash=%s", nix32.encode(self.nar_hash))
                self.abort()
                return False
            self.file.flush()
            os.fdatasync(self.file.fileno())  # a crash must never leave a right-sized wrong file
            self.file.close()
            return True
        except OSError as error:
            log.warning("not caching NAR error=%s", error)
            self.abort()
            return False

    def abort(self) -> None:
        """Drop the temporary file (also after finish, if publishing failed)."""
        self.file.close()
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def _name(nar_hash: bytes) -> str:
    return nix32.encode(nar_hash) + ".nar"
