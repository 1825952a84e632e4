"""HTTP byte ranges (RFC 9110 section 14), one range per request: what Nix sends to resume a NAR.

NAR URLs name their NarHash, so what they name never changes: `If-Range` always holds and needs
no check.
"""

import re

_SPEC = re.compile(r"bytes=(\d*)-(\d*)")
_DIGITS = 18  # past this, a position cannot be a NAR's (a 10^18-byte NAR is none)


class RangeError(ValueError):
    """A Range header that is not one well-formed byte range: answered 400 with the reason."""


class Unsatisfiable(ValueError):
    """A well-formed range that lies outside the NAR: answered 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, end) that `header` asks for of `size` bytes; None without a header."""
    if header is None:
        return None
    spec = header.strip().replace(" ", "")
    if "," in spec:
        raise RangeError("one byte range per request, not several")
    match = _SPEC.fullmatch(spec)
    if match is None or not any(match.groups()):
        raise RangeError(f"not a byte range (bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX): {header[:80]!r}")
    first, last = match.groups()
    if len(first) > _DIGITS or len(last) > _DIGITS:
        raise RangeError("byte position out of range")
    if not first:  # the last `last` bytes
        if int(last) == 0:
            raise Unsatisfiable("an empty suffix")
        return max(size - int(last), 0), size
    start = int(first)
    if last and int(last) < start:
        raise RangeError(f"the range ends before it starts: {header[:80]!r}")
    end = int(last) + 1 if last else size
    if start >= size:
        raise Unsatisfiable(f"the range starts at {start}, past the last byte ({size - 1})")
    return start, min(end, size)


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"
