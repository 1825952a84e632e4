"""The Nix archive (NAR) format, streamed from a file system tree in bounded memory.

A NAR is a sequence of *segments*: literal framing bytes and the contents of regular files.
Keeping file contents as (path, size) segments instead of bytes lets a caller stream a NAR
chunk by chunk, or later serve a byte range of it, without ever building it whole.
"""

import bisect
import hashlib
import itertools
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_SIZE = 1 << 20
_PAD = bytes(8)


class NarError(OSError):
    """The tree cannot be archived: unsupported file type, or it changed while being read."""


@dataclass(frozen=True, slots=True)
class FileContents:
    path: bytes
    size: int


Segment = bytes | FileContents


def frame(*strings: bytes) -> bytes:
    """NAR strings: each a little-endian u64 length, the bytes, zero padding to 8."""
    return b"".join(struct.pack("<Q", len(s)) + s + _PAD[: -len(s) % 8] for s in strings)


_MAGIC = frame(b"nix-archive-1")
_REGULAR = frame(b"(", b"type", b"regular", b"contents")
_EXECUTABLE = frame(b"(", b"type", b"regular", b"executable", b"", b"contents")
_SYMLINK = frame(b"(", b"type", b"symlink", b"target")
_DIRECTORY = frame(b"(", b"type", b"directory")
_ENTRY = frame(b"entry", b"(", b"name")
_NODE = frame(b"node")
_CLOSE = frame(b")")


def segments(root: bytes) -> Iterator[Segment]:
    """The segments of the NAR of `root` (a bytes path; nothing is followed through symlinks).

    One flat loop over a stack of open directories rather than recursive generators: NARs of
    trees with many small files are dominated by per-entry overhead.
    """
    yield _MAGIC
    stack: list[tuple[bytes, Iterator[bytes]]] = []  # open directories and their remaining names
    path, closing = root, _CLOSE
    while True:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
            yield (_EXECUTABLE if st.st_mode & stat.S_IXUSR else _REGULAR) + struct.pack("<Q", size)
            if size:
                yield FileContents(path, size)
            yield _PAD[: -size % 8] + closing
        elif stat.S_ISLNK(st.st_mode):
            yield _SYMLINK + frame(os.readlink(path)) + closing
        elif stat.S_ISDIR(st.st_mode):
            yield _DIRECTORY
            with os.scandir(path) as entries:
                stack.append((path, iter(sorted(entry.name for entry in entries))))
        else:
            raise NarError(f"cannot archive {os.fsdecode(path)!r}: not a regular file, directory or symlink")
        while stack:
            directory, names = stack[-1]
            name = next(names, None)
            if name is not None:
                break
            stack.pop()
            yield _CLOSE + _CLOSE if stack else _CLOSE  # the directory node, and the entry holding it
        else:
            return
        yield _ENTRY + frame(name) + _NODE
        path, closing = os.path.join(directory, name), _CLOSE + _CLOSE


def coalesce(parts: Iterable[Segment], chunk_size: int = CHUNK_SIZE) -> Iterator[Segment]:
    """Gather framing and small files into bytes chunks of about `chunk_size`.

    Each small file's bytes are copied once (into the joined chunk). Files of `chunk_size` or
    more are passed through as FileContents, for the caller to send zero-copy or `read_file`.
    """
    pending: list[bytes] = []
    size = 0
    for part in parts:
        if isinstance(part, bytes):
            pending.append(part)
            size += len(part)
        elif part.size < chunk_size:
            pending.append(_read_small(part))
            size += part.size
        else:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield part
            continue
        if size >= chunk_size:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _read_small(part: FileContents) -> bytes:
    fd = os.open(part.path, _OPEN_FLAGS)
    try:
        data = os.read(fd, part.size + 1)  # one read also tells whether the file grew
    finally:
        os.close(fd)
    if len(data) != part.size:
        raise _changed(part.path)
    return data


def read_file(part: FileContents, chunk_size: int = CHUNK_SIZE, start: int = 0,
              stop: int | None = None) -> Iterator[bytes]:
    """A file's bytes [start, stop) in chunks, the file checked to be exactly the size the NAR
    header announced."""
    stop = part.size if stop is None else stop
    fd = os.open(part.path, _OPEN_FLAGS)
    try:
        if os.fstat(fd).st_size != part.size:
            raise _changed(part.path)
        position = start
        while position < stop:
            data = os.pread(fd, min(stop - position, chunk_size), position)
            if not data:
                raise _changed(part.path)
            position += len(data)
            yield data
    finally:
        os.close(fd)


class SegmentCursor:
    """The segments of one NAR consumed forward, with the offset where the current one starts: a
    range that begins at or after where the previous one ended continues the same walk, so the
    pieces of a split transfer cost one walk of the tree, not one each."""

    def __init__(self, parts: Iterable[Segment], offset: int = 0) -> None:
        self._parts = iter(parts)
        self._started = False
        self.offset = offset  # where the first of `parts` starts in the NAR
        self.current: Segment | None = None

    def start(self) -> None:
        """Take the first segment: file system work, so on the caller's worker thread, not here."""
        if not self._started:
            self._started = True
            self.current = next(self._parts, None)

    def advance(self) -> None:
        assert self.current is not None
        self.offset += _size(self.current)
        self.current = next(self._parts, None)

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close:
            close()


class SegmentIndex:
    """A NAR's segments, kept with where each starts: after one walk, a range anywhere starts at the
    segment holding its first byte (a bisection) instead of a walk over every file before it."""

    def __init__(self, parts: list[Segment]) -> None:
        self.parts = parts
        self.starts = list(itertools.accumulate(map(_size, parts), initial=0))

    def __len__(self) -> int:
        return len(self.parts)

    def cursor(self, start: int) -> SegmentCursor:
        at = max(bisect.bisect_right(self.starts, start) - 1, 0)
        return SegmentCursor(itertools.islice(self.parts, at, None), self.starts[at])


def byte_range(parts: "SegmentCursor | Iterable[Segment]", start: int, end: int,
               chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes [start, end) of the NAR made of `parts` (uncoalesced segments, or a cursor at or
    before `start`), in chunks of about `chunk_size`: files before `start` are skipped by their
    size, never opened, and only the part of a file inside the range is read. A cursor is left on
    the segment holding `end`, for the next range."""
    cursor = parts if isinstance(parts, SegmentCursor) else SegmentCursor(parts)
    if start < cursor.offset:
        raise ValueError(f"the cursor is already at {cursor.offset}, past {start}")
    cursor.start()
    pending: list[bytes] = []
    pending_size = 0
    while (part := cursor.current) is not None and cursor.offset < end:
        position, size = cursor.offset, _size(part)
        if position + size > start:
            low, high = max(start - position, 0), min(end - position, size)
            if isinstance(part, bytes):
                pieces: Iterable[bytes] = (part if (low, high) == (0, size) else part[low:high],)
            else:
                pieces = read_file(part, chunk_size, low, high)
            for piece in pieces:
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= chunk_size:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
        if position + size > end:
            break  # the next range may start inside this segment
        cursor.advance()
    if pending:
        yield b"".join(pending)


def _size(part: Segment) -> int:
    return len(part) if isinstance(part, bytes) else part.size


def open_file(part: FileContents) -> BinaryIO:
    """Open a file for zero-copy sending, refusing one whose size no longer matches its header."""
    file = open(part.path, "rb", buffering=0, opener=lambda path, flags: os.open(path, flags | _OPEN_FLAGS))
    if os.fstat(file.fileno()).st_size != part.size:
        file.close()
        raise _changed(part.path)
    return file


def dump(path: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The NAR of `path` as bytes chunks; peak memory is a few chunks whatever the size."""
    for part in coalesce(segments(path), chunk_size):
        if isinstance(part, bytes):
            yield part
        else:
            yield from read_file(part, chunk_size)


class NarDigest:
    """NarHash and NarSize of a stream, accumulated chunk by chunk."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.size += len(chunk)

    def digest(self) -> bytes:
        return self._sha256.digest()


def hash_path(path: bytes) -> tuple[bytes, int]:
    """NarHash digest and NarSize of `path`, as Nix would record them."""
    digest = NarDigest()
    for chunk in dump(path):
        digest.update(chunk)
    return digest.digest(), digest.size


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _changed(path: bytes) -> NarError:
    return NarError(f"{os.fsdecode(path)!r} changed size while being archived")
