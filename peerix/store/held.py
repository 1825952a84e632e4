"""Paths this host holds outside its Nix store: NARs pulled through from the upstream cache.

Each entry is two files in the directory: `<hash part>.narinfo` (the path's info as accepted from
the upstream, its signatures untouched) and `<hash part>.nar` (the plain NAR, whatever the upstream
compressed it with). The budget is in bytes, least recently used first out; an entry whose path Nix
has since imported is dropped, because the store serves it from then on.

A NAR is held while it downloads, not only after: it grows in a temporary file that readers follow
(the local Nix, and peers who fetch the part already there by range and wait for the rest). It is
published under its name only once its size and SHA-256 match its NarHash and it is on disk, so a
published entry is valid for as long as it exists; a crash leaves a temporary file that the next
start deletes.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from ..nix.narinfo import NarInfo, NarInfoError, PathInfo

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
_TEMPORARY = ".tmp-"


class HeldError(OSError):
    """A growing NAR failed (its download broke, or it did not match its NarHash)."""


class Growing:
    """One NAR being written: bytes [0, written) are in the file and may be read while it grows."""

    def __init__(self, info: PathInfo, path: Path) -> None:
        self.info = info
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.written = 0
        self.verified = False
        self.error: HeldError | None = None
        self._sha256 = hashlib.sha256()
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        return self.verified or self.error is not None

    def write(self, data: bytes) -> None:
        """Append NAR bytes (blocking, but into the page cache)."""
        if self.written + len(data) > self.info.nar_size:
            raise HeldError(f"{self.info.store_path}: more bytes than its NarSize {self.info.nar_size}")
        view = memoryview(data)
        while view:
            count = os.pwrite(self.fd, view, self.written)
            view, self.written = view[count:], self.written + count
        self._sha256.update(data)
        self._notify()

    def finish(self) -> None:
        """Check the whole NAR against NarSize and NarHash and sync it to disk; HeldError if it fails."""
        if self.written != self.info.nar_size or self._sha256.digest() != self.info.nar_hash:
            raise self.fail(HeldError(f"{self.info.store_path}: the NAR does not match its NarHash"))
        os.fdatasync(self.fd)
        self.verified = True
        self._notify()

    def fail(self, error: BaseException) -> HeldError:
        self.error = error if isinstance(error, HeldError) else HeldError(f"{self.info.store_path}: {error}")
        self._notify()
        return self.error

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def read(self, start: int = 0, end: int | None = None, verified: bool = False) -> AsyncIterator[bytes]:
        """Bytes [start, end) as they arrive. `verified`: the last chunk only once the whole NAR
        matched its NarHash (for the local Nix, which takes an ended stream as a whole NAR).

        The reader has a descriptor of its own, opened now: it keeps reading the same file after
        the NAR is published under another name."""
        return self._read(os.open(self.path, os.O_RDONLY | os.O_CLOEXEC), start,
                          self.info.nar_size if end is None else end, verified)

    async def _read(self, fd: int, start: int, end: int, verified: bool) -> AsyncIterator[bytes]:
        position = start
        try:
            while position < end:
                if self.error is not None:
                    raise self.error
                available = min(self.written, end) if not verified or self.verified else min(self.written, end - 1)
                if available > position:
                    chunk = os.pread(fd, min(available - position, READ_SIZE), position)
                    position += len(chunk)
                    yield chunk
                else:
                    await self._changed.wait()
        finally:
            os.close(fd)


class HeldPaths:
    """The index of held paths; used from the event loop thread only."""

    def __init__(self, directory: Path, max_bytes: int, store_dir: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.store_dir = store_dir
        self._entries: OrderedDict[str, PathInfo] = OrderedDict()  # least recently used first
        self._total = 0
        self._growing: dict[str, Growing] = {}
        self.evicted = 0
        self.version = 0  # changes whenever the set of held paths does: time to announce
        directory.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in os.scandir(directory):
            if entry.name.startswith(_TEMPORARY):
                os.unlink(entry.path)  # a download cut short by a crash
            elif entry.name.endswith(".narinfo"):
                found.append((entry.stat().st_mtime_ns, entry.name.removesuffix(".narinfo")))
        for _, hash_part in sorted(found):
            info = self._read(hash_part)
            if info is None:
                self._remove_files(hash_part)
            else:
                self._add(hash_part, info)
        self._evict()

    def _read(self, hash_part: str) -> PathInfo | None:
        try:
            info = NarInfo.parse((self.directory / f"{hash_part}.narinfo").read_text(), self.store_dir)
            size = (self.directory / f"{hash_part}.nar").stat().st_size
        except (OSError, NarInfoError) as error:
            log.warning("dropping an unreadable held path hash=%s error=%s", hash_part, error)
            return None
        return info if size == info.nar_size and info.store_path.hash_part == hash_part else None

    @property
    def total_bytes(self) -> int:
        return self._total

    @property
    def entries(self) -> int:
        return len(self._entries)

    def get(self, hash_part: str) -> PathInfo | None:
        info = self._entries.get(hash_part)
        if info is not None:
            self._entries.move_to_end(hash_part)
        return info

    def infos(self) -> list[PathInfo]:
        return list(self._entries.values())

    def nar_path(self, hash_part: str) -> bytes:
        return os.fsencode(self.directory / f"{hash_part}.nar")

    def growing(self, hash_part: str) -> Growing | None:
        return self._growing.get(hash_part)

    def begin(self, info: PathInfo) -> Growing:
        """A new growing NAR for a path neither held nor growing; `publish` or `abandon` it."""
        hash_part = info.store_path.hash_part
        assert hash_part not in self._growing and hash_part not in self._entries, hash_part
        growing = Growing(info, self.directory / f"{_TEMPORARY}{hash_part}.nar")
        self._growing[hash_part] = growing
        return growing

    def publish(self, growing: Growing, narinfo_text: str) -> None:
        """A verified NAR becomes an entry (its file keeps serving readers that follow it)."""
        hash_part = growing.info.store_path.hash_part
        del self._growing[hash_part]
        try:
            (self.directory / f"{_TEMPORARY}{hash_part}.narinfo").write_text(narinfo_text)
            os.replace(growing.path, self.directory / f"{hash_part}.nar")
            os.replace(self.directory / f"{_TEMPORARY}{hash_part}.narinfo", self.directory / f"{hash_part}.narinfo")
        except OSError as error:
            log.warning("not holding path=%s error=%s", growing.info.store_path, error)
            self._remove_files(hash_part)
        else:
            self._add(hash_part, growing.info)
            self._evict()
        finally:
            os.close(growing.fd)

    def abandon(self, growing: Growing) -> None:
        """Drop a growing NAR that failed; its readers see its error."""
        hash_part = growing.info.store_path.hash_part
        if self._growing.get(hash_part) is growing:
            del self._growing[hash_part]
        if growing.error is None:
            growing.fail(HeldError("abandoned"))
        os.close(growing.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(growing.path)

    def drop(self, hash_part: str) -> None:
        """Forget an entry (Nix imported its path, so the store serves it now)."""
        info = self._entries.pop(hash_part, None)
        if info is not None:
            self._total -= info.nar_size
            self.version += 1
            self._remove_files(hash_part)

    def _add(self, hash_part: str, info: PathInfo) -> None:
        self._entries[hash_part] = info
        self._total += info.nar_size
        self.version += 1

    def _evict(self) -> None:
        while self._total > self.max_bytes and self._entries:
            hash_part = next(iter(self._entries))
            self.drop(hash_part)
            self.evicted += 1

    def _remove_files(self, hash_part: str) -> None:
        for suffix in (".narinfo", ".nar"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / f"{hash_part}{suffix}")
