"""The Nix archive (NAR) format, streamed from a file system tree in bounded memory.

A NAR is a sequence of *segments*: literal framing bytes and the contents of regular files.
Keeping file contents as (path, size) segments instead of bytes lets a caller stream a NAR
chunk by chunk, or later serve a byte range of it, without ever building it whole.
"""

import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
    return b"".join(
        struct.pack("<Q", len(s)) + s + _PAD[: -len(s) % 8] for s in strings
    )


_MAGIC = frame(b"nix-archive-1")
_REGULAR = frame(b"(", b"type", b"regular")
_EXECUTABLE = frame(b"executable", b"")
_CONTENTS = frame(b"contents")
_SYMLINK = frame(b"(", b"type", b"symlink", b"target")
_DIRECTORY = frame(b"(", b"type", b"directory")
_CLOSE = frame(b")")


def segments(path: bytes) -> Iterator[Segment]:
    """The segments of the NAR of `path` (a bytes path; nothing is followed through symlinks)."""
    yield _MAGIC
    yield from _node(path, os.lstat(path))


def _node(path: bytes, st: os.stat_result) -> Iterator[Segment]:
    if stat.S_ISREG(st.st_mode):
        yield _REGULAR + (_EXECUTABLE if st.st_mode & stat.S_IXUSR else b"") + _CONTENTS
        yield struct.pack("<Q", st.st_size)
        if st.st_size:
            yield FileContents(path, st.st_size)
        yield _PAD[: -st.st_size % 8] + _CLOSE
    elif stat.S_ISLNK(st.st_mode):
        yield _SYMLINK + frame(os.readlink(path)) + _CLOSE
    elif stat.S_ISDIR(st.st_mode):
        yield _DIRECTORY
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            child = os.path.join(path, name)
            yield frame(b"entry", b"(", b"name", name, b"node")
            yield from _node(child, os.lstat(child))
            yield _CLOSE
        yield _CLOSE
    else:
        raise NarError(f"cannot archive {os.fsdecode(path)!r}: not a regular file, directory or symlink")


def chunks(parts: Iterable[Segment], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Turn segments into bytes chunks of about `chunk_size`.

    Framing and small files are gathered so a tree of tiny files does not become a flood of tiny
    writes; large files are read straight into chunks that are passed on without another copy.
    """
    pending = bytearray()
    for part in parts:
        if isinstance(part, bytes):
            pending += part
        else:
            with open(part.path, "rb", buffering=0, opener=_open_nofollow) as file:
                remaining = part.size
                while remaining:
                    if len(pending) >= chunk_size:
                        yield bytes(pending)
                        pending.clear()
                    if not pending and remaining >= chunk_size:
                        piece = file.read(chunk_size)
                        if len(piece) != chunk_size:
                            raise _changed(part.path)
                        yield piece
                        remaining -= chunk_size
                        continue
                    piece = file.read(min(remaining, chunk_size - len(pending)))
                    if not piece:
                        raise _changed(part.path)
                    pending += piece
                    remaining -= len(piece)
                if file.read(1):
                    raise _changed(part.path)
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def dump(path: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The NAR of `path` as a stream of chunks; peak memory is a few chunks whatever the size."""
    return chunks(segments(path), chunk_size)


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


def _open_nofollow(path: bytes, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _changed(path: bytes) -> NarError:
    return NarError(f"{os.fsdecode(path)!r} changed size while being archived")
