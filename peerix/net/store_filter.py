"""A store summary: the hashes of the paths a host shares as a binary fuse filter (about 9.3 bits a
path, 0.4% false positives), the answer of `/peerix/summary/1`.

The filter is pyfusefilter's C core, binary_fuse8, used through its cffi module: its Python wrapper
hashes keys with an xxhash call that current xxhash releases refuse. Keys are our own, the first 64
bits of BLAKE2b of the hash part's text, so that the format does not hang on a wrapper's choices.
The serialized form is the library's (native byte order; every platform peerix runs on is little
endian): a 28-byte header, then the fingerprints. The C code trusts that header to index its
array, so a filter from a peer is checked here first: a header whose lengths could lead a lookup
outside the bytes received is refused, never handed to the library.
"""

import hashlib
import struct
from collections.abc import Iterable

from pyfusefilter._xorfilter import ffi, lib

FORMAT = "fuse8-blake2b64"
MAX_BYTES = 8 << 20  # about 7 million paths
_HEADER = struct.Struct("<QIIIII")  # seed, size, segment length, segment count, segment count length, array length


class FilterError(Exception):
    """Not a filter this host can use: malformed, inconsistent or too large."""


def key(hash_part: str) -> int:
    return int.from_bytes(hashlib.blake2b(hash_part.encode(), digest_size=8).digest(), "little")


class StoreFilter:
    """Membership of store path hashes, with false positives (0.4%) and no false negatives."""

    def __init__(self, data: bytes) -> None:
        self.data = data  # the serialized filter, as sent to peers
        self._filter = ffi.gc(ffi.new("binary_fuse8_t *"), lib.binary_fuse8_free)
        if not lib.binary_fuse8_deserialize(self._filter, ffi.from_buffer(data)):
            raise FilterError("no memory for the filter")
        self.size = _HEADER.unpack_from(data)[1]
        # what LAN packets carry to say which filter is current: it changes with the contents
        self.generation = int.from_bytes(hashlib.blake2b(data, digest_size=6).digest(), "big")

    @classmethod
    def build(cls, hash_parts: Iterable[str]) -> "StoreFilter":
        keys = sorted({key(h) for h in hash_parts})
        built = ffi.new("binary_fuse8_t *")
        if not lib.binary_fuse8_allocate(len(keys), built):
            raise FilterError("no memory for the filter")
        try:
            if not lib.binary_fuse8_populate(ffi.new("uint64_t[]", keys or [0]), len(keys), built):
                raise FilterError(f"could not build a filter of {len(keys)} keys")
            buffer = ffi.new("char[]", lib.binary_fuse8_serialization_bytes(built))
            lib.binary_fuse8_serialize(built, buffer)
            return cls(bytes(ffi.buffer(buffer)))
        finally:
            lib.binary_fuse8_free(built)

    @classmethod
    def parse(cls, data: bytes) -> "StoreFilter":
        """A peer's filter, once its header is proven consistent with its length."""
        if not _HEADER.size <= len(data) <= MAX_BYTES:
            raise FilterError(f"{len(data)} bytes is not the size of a filter")
        _, _, segment, segments, segments_length, array = _HEADER.unpack_from(data)
        if not (0 < segment <= 1 << 18 and segment & (segment - 1) == 0 and 0 < segments
                and segments_length == segments * segment and array == segments_length + 2 * segment
                and len(data) == _HEADER.size + array):
            raise FilterError("inconsistent header")
        return cls(data)

    def __contains__(self, hash_part: str) -> bool:
        return bool(lib.binary_fuse8_contain(key(hash_part), self._filter))
