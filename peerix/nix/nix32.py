"""Nix's base-32 encoding.

Nix's alphabet omits e, o, t and u, and it writes the 5-bit groups of the little-endian number
from the most significant to the least. Both directions go through a string of binary digits so
the per-character work runs in C; encodings are cached because serving one narinfo encodes the
same NarHash several times (URL, FileHash, NarHash, fingerprint).
"""

import functools
import re

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_CHAR_OF_BITS = {format(i, "05b"): c for i, c in enumerate(ALPHABET)}
_BITS_OF_CHAR = {c: bits for bits, c in _CHAR_OF_BITS.items()}
_FIVE_BITS = re.compile(".{5}")


def encoded_length(nbytes: int) -> int:
    return (nbytes * 8 - 1) // 5 + 1


@functools.lru_cache(maxsize=4096)
def encode(data: bytes) -> str:
    bits = format(int.from_bytes(data, "little"), f"0{encoded_length(len(data)) * 5}b")
    return "".join(map(_CHAR_OF_BITS.__getitem__, _FIVE_BITS.findall(bits)))


def decode(text: str) -> bytes:
    """Decode nix32; raise ValueError on a bad character or bits beyond the byte length."""
    nbytes = len(text) * 5 // 8
    if not text or encoded_length(nbytes) != len(text):
        raise ValueError(f"invalid nix32 length {len(text)}")
    try:
        number = int("".join(map(_BITS_OF_CHAR.__getitem__, text)), 2)
    except KeyError as bad:
        raise ValueError(f"invalid nix32 character {bad}") from None
    if number >> (nbytes * 8):
        raise ValueError("nix32 string has bits set beyond its length")
    return number.to_bytes(nbytes, "little")
