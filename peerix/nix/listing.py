"""NAR listings: the `<hash>.ls` JSON Nix writes beside a NAR (`write-nar-listing`), read from a NAR.

    {"version": 1, "root": {"type": "directory", "entries": {"bin": {"type": "regular", "size": 5,
     "executable": true, "narOffset": 400}, ...}}}

`narOffset` is where a regular file's contents start inside the NAR: Nix's remote accessor reads one
file with a range request from there (`nix store cat`). The listing is computed by parsing a NAR, so
one parser serves both sides: the host's own paths (the segments of a tree walk, whose file contents
are skipped by their size and never read) and NARs streaming from peers (fed chunk by chunk as they
pass, and believed only once the whole NAR matched its NarHash). The parser checks the grammar as
Nix does (names, their order, string lengths) and bounds what a hostile NAR can make it hold.
"""

import struct
from collections.abc import Generator, Iterable
from typing import Any

from .nar import FileContents, Segment

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


def _grammar() -> Generator[_Want, bytes, Node]:
    """The NAR grammar, as a generator fed the bytes it asks for; returns the root node."""
    offset = 0
    entries = 0

    def string(limit: int) -> Generator[_Want, bytes, bytes]:
        nonlocal offset
        (length,) = struct.unpack("<Q", (yield (8, True)))
        if length > limit:
            raise NarFormatError(f"a string of {length} bytes at offset {offset} (at most {limit} here)")
        data = yield (length, True)
        padding = yield (-length % 8, True)
        if padding != _PADDING[: -length % 8]:
            raise NarFormatError(f"non-zero padding at offset {offset}")
        offset += 8 + length + (-length % 8)
        return data

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
        self._buffer = bytearray()
        self._root: Node | None = None
        self.position = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self._root is not None:
                raise NarFormatError(f"{len(view)} bytes after the end of the NAR")
            count, keep = self._want
            take = min(count - (len(self._buffer) if keep else 0), len(view))
            if keep:
                self._buffer += view[:take]
            else:
                self._want = (count - take, False)
            view = view[take:]
            self.position += take
            if (keep and len(self._buffer) == count) or (not keep and self._want[0] == 0):
                self._advance(bytes(self._buffer) if keep else b"")
        while self._root is None and self._want[0] == 0:  # empty strings need no bytes
            self._advance(b"")

    def skip(self, count: int) -> None:
        """Bytes the caller knows and need not hand over: a file's contents in a tree walk."""
        want, keep = self._want
        if keep or count != want:
            raise NarFormatError(f"{count} bytes skipped where the NAR has {want} to {'read' if keep else 'skip'}")
        self.position += count
        self._advance(b"")

    def _advance(self, data: bytes) -> None:
        self._buffer.clear()
        try:
            self._want = self._grammar.send(data)
        except StopIteration as done:
            self._root = done.value
            self._want = (0, True)

    def result(self) -> dict[str, Any]:
        if self._root is None:
            raise NarFormatError(f"the NAR ends early, at byte {self.position}")
        return listing(self._root)


def listing_of(parts: Iterable[Segment | bytes]) -> dict[str, Any]:
    """The listing of a NAR given as segments (file contents skipped unread) or bytes chunks."""
    parser = ListingParser()
    for part in parts:
        if isinstance(part, FileContents):
            parser.skip(part.size)
        else:
            parser.feed(part)
    return parser.result()
