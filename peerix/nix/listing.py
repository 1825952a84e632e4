"""NAR listings: the `<hash>.ls` JSON Nix writes beside a NAR (`write-nar-listing`).

    {"version": 1, "root": {"type": "directory", "entries": {"bin": {"type": "regular", "size": 5,
     "executable": true, "narOffset": 400}, ...}}}

`narOffset` is where a regular file's contents start inside the NAR: Nix's remote accessor reads one
file with a range request from there (`nix store cat`). Two ways to one listing: `tree_listing` for
the host's own paths (one lstat per entry, offsets from the NAR's grammar: nothing is read or
framed), and `ListingParser` for NARs streaming from peers (fed chunk by chunk as they pass, and
believed only once the whole NAR matched its NarHash). The parser checks the grammar as Nix does
(names, their order, string lengths) and bounds what a hostile NAR can make it hold.
"""

import json
import os
import stat
import struct
from collections.abc import Generator
from typing import Any

from .nar import NarError, frame

MAX_NAME = 255  # a file name, as the file system allows
MAX_TARGET = 4096  # a symlink target (PATH_MAX)
MAX_TOKEN = 64  # framing words: "nix-archive-1", "type", "regular", ...
MAX_ENTRIES = 1 << 20  # nodes in one listing
_PADDING = bytes(8)

Node = dict[str, Any]
# The parser yields how many bytes it wants next: (count, True) to receive them, (count, False) to
# have them skipped (a file's contents); it gets the bytes (or b"" for a skip) sent back.
_Want = tuple[int, bool]


class NarFormatError(ValueError):
    """Not a NAR: bad framing, a bad name, entries out of order, or more than the bounds allow."""


def listing(node: Node) -> dict[str, Any]:
    return {"version": 1, "root": node}


def render(found: dict[str, Any]) -> bytes:
    """As Nix writes it: compact, keys in Nix's order, names as their bytes."""
    return json.dumps(found, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")


# The lengths of the NAR's framing around what varies (names, targets, file contents).
_MAGIC = len(frame(b"nix-archive-1"))
_REGULAR = len(frame(b"(", b"type", b"regular", b"contents")) + 8  # through the size field
_EXECUTABLE = len(frame(b"(", b"type", b"regular", b"executable", b"", b"contents")) + 8
_SYMLINK = len(frame(b"(", b"type", b"symlink", b"target"))
_DIRECTORY = len(frame(b"(", b"type", b"directory"))
_ENTRY = len(frame(b"entry", b"(", b"name"))
_NODE = len(frame(b"node"))
_CLOSE = len(frame(b")"))


def _string(length: int) -> int:
    return 8 + length + (-length % 8)


def tree_listing(root: bytes) -> dict[str, Any]:
    """The listing of the NAR of the tree at `root` (a bytes path; symlinks are not followed)."""
    offset = _MAGIC

    def node(path: bytes, st: os.stat_result) -> Node:
        nonlocal offset
        if stat.S_ISREG(st.st_mode):
            size, executable = st.st_size, bool(st.st_mode & stat.S_IXUSR)
            offset += _EXECUTABLE if executable else _REGULAR
            found: Node = {"type": "regular", "size": size}
            if executable:
                found["executable"] = True
            found["narOffset"] = offset
            offset += size + (-size % 8) + _CLOSE
            return found
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            offset += _SYMLINK + _string(len(target)) + _CLOSE
            return {"type": "symlink", "target": _text(target)}
        if not stat.S_ISDIR(st.st_mode):
            raise NarError(f"cannot archive {os.fsdecode(path)!r}: not a regular file, directory or symlink")
        offset += _DIRECTORY
        children: dict[str, Node] = {}
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            offset += _ENTRY + _string(len(entry.name)) + _NODE
            children[_text(entry.name)] = node(entry.path, entry.stat(follow_symlinks=False))
            offset += _CLOSE
        offset += _CLOSE
        return {"type": "directory", "entries": children}

    try:
        return listing(node(root, os.lstat(root)))
    except RecursionError:
        raise NarError(f"{os.fsdecode(root)!r} is nested too deeply to list") from None


def _grammar() -> Generator[_Want, bytes, Node]:
    """The NAR grammar, as a generator fed the bytes it asks for; returns the root node."""
    offset = 0
    entries = 0

    def string(limit: int) -> Generator[_Want, bytes, bytes]:
        nonlocal offset
        (length,) = struct.unpack("<Q", (yield (8, True)))
        if length > limit:
            raise NarFormatError(f"a string of {length} bytes at offset {offset} (at most {limit} here)")
        padded = yield (length + (-length % 8), True)  # one want for the string and its padding
        if padded[length:] != _PADDING[: -length % 8]:
            raise NarFormatError(f"non-zero padding at offset {offset}")
        offset += 8 + len(padded)
        return padded[:length]

    def expect(*words: bytes) -> Generator[_Want, bytes, None]:
        for word in words:
            got = yield from string(MAX_TOKEN)
            if got != word:
                raise NarFormatError(f"expected {word.decode()!r} before offset {offset}, got {got[:32]!r}")

    def node() -> Generator[_Want, bytes, Node]:
        nonlocal offset, entries
        entries += 1
        if entries > MAX_ENTRIES:
            raise NarFormatError(f"more than {MAX_ENTRIES} entries")
        yield from expect(b"(", b"type")
        kind = yield from string(MAX_TOKEN)
        if kind == b"regular":
            tag = yield from string(MAX_TOKEN)
            executable = tag == b"executable"
            if executable:
                yield from expect(b"")
                tag = yield from string(MAX_TOKEN)
            if tag != b"contents":
                raise NarFormatError(f"expected 'contents' before offset {offset}")
            (size,) = struct.unpack("<Q", (yield (8, True)))
            start = offset + 8
            yield (size, False)
            padding = yield (-size % 8, True)
            if padding != _PADDING[: -size % 8]:
                raise NarFormatError(f"non-zero padding after the file at offset {start}")
            offset = start + size + (-size % 8)
            yield from expect(b")")
            found: Node = {"type": "regular", "size": size}
            if executable:
                found["executable"] = True
            found["narOffset"] = start
            return found
        if kind == b"symlink":
            yield from expect(b"target")
            target = yield from string(MAX_TARGET)
            yield from expect(b")")
            return {"type": "symlink", "target": _text(target)}
        if kind != b"directory":
            raise NarFormatError(f"unknown node type {kind[:32]!r}")
        children: dict[str, Node] = {}
        previous = b""
        while True:
            tag = yield from string(MAX_TOKEN)
            if tag == b")":
                return {"type": "directory", "entries": children}
            if tag != b"entry":
                raise NarFormatError(f"expected 'entry' or ')' before offset {offset}")
            yield from expect(b"(", b"name")
            name = yield from string(MAX_NAME)
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise NarFormatError(f"invalid file name {name[:64]!r}")
            if name <= previous:
                raise NarFormatError(f"entry {name[:64]!r} is not after {previous[:64]!r}")
            previous = name
            yield from expect(b"node")
            children[_text(name)] = yield from node()
            yield from expect(b")")

    yield from expect(b"nix-archive-1")
    return (yield from node())


def _text(name: bytes) -> str:
    """JSON holds text: names that are not UTF-8 keep their bytes as surrogates, as Python's os does."""
    return name.decode("utf-8", "surrogateescape")


class ListingParser:
    """Push parser: feed a NAR's bytes in any chunks; `result()` once they are all in."""

    def __init__(self) -> None:
        self._grammar = _grammar()
        self._want = next(self._grammar)
        self._buffer: bytes | bytearray | memoryview = b""
        self._root: Node | None = None
        self.position = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        data = memoryview(chunk)
        at, size = 0, len(data)
        while at < size:
            if self._root is not None:
                raise NarFormatError(f"{size - at} bytes after the end of the NAR")
            count, keep = self._want
            if not keep:  # a file's contents, skipped
                take = min(count, size - at)
                self._want = (count - take, False)
            elif not self._buffer and size - at >= count:  # the common case: all there, no copy to the buffer
                take = count
                self._buffer = data[at:at + count]
            else:
                take = min(count - len(self._buffer), size - at)
                self._buffer = bytearray(self._buffer) + data[at:at + take]
            at += take
            self.position += take
            if len(self._buffer) == count if keep else self._want[0] == 0:
                self._advance(bytes(self._buffer))
        while self._root is None and self._want[0] == 0:  # empty strings need no bytes
            self._advance(b"")

    def _advance(self, data: bytes) -> None:
        self._buffer = b""
        try:
            self._want = self._grammar.send(data)
        except StopIteration as done:
            self._root = done.value
            self._want = (0, True)

    def result(self) -> dict[str, Any]:
        if self._root is None:
            raise NarFormatError(f"the NAR ends early, at byte {self.position}")
        return listing(self._root)
