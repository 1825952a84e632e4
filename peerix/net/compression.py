"""zstd for NAR bytes between peers, as independent blocks.

On the wire each block is a header (`>II`: stored length, NAR length) and the stored bytes: a zstd
frame when it is smaller than the NAR bytes, else the NAR bytes themselves. Independent blocks
keep decompression bounded (a block never expands past the length its header states, and that
is checked before anything is allocated) and let a sender give up on data that does not compress.
"""

import struct

import zstandard

BLOCK = struct.Struct(">II")
MAX_BLOCK = 4 << 20  # NAR bytes in one block; larger headers are refused
WORTH_IT = 0.9  # compress only while a block shrinks to at most this share of its size
LEVEL = 3
SAMPLE = 64 << 10  # the first block this large decides (a NAR starts with a few bytes of framing)


class CompressionError(Exception):
    """A block that breaks the format: too large, or not decompressing to its stated length."""


class BlockCompressor:
    """Turns NAR chunks into blocks. After a first sizeable block that does not compress, it stops
    trying: the rest is stored as it is and costs no CPU."""

    def __init__(self, level: int = LEVEL) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level)
        self.worth_it: bool | None = None  # unknown until the first block
        self.raw_bytes = self.stored_bytes = 0

    def block(self, chunk: bytes) -> bytes:
        """One block per chunk of at most MAX_BLOCK bytes; CPU-heavy, so callers run it on a thread."""
        if len(chunk) > MAX_BLOCK:
            raise ValueError(f"chunk of {len(chunk)} bytes exceeds {MAX_BLOCK}")
        stored = chunk
        if self.worth_it is not False:
            compressed = self._zstd.compress(chunk)
            if self.worth_it is None and len(chunk) >= SAMPLE:
                self.worth_it = len(compressed) <= WORTH_IT * len(chunk)
            if len(compressed) < len(chunk):
                stored = compressed
        self.raw_bytes += len(chunk)
        self.stored_bytes += len(stored)
        return BLOCK.pack(len(stored), len(chunk)) + stored

    def blocks(self, chunk: bytes) -> list[bytes]:
        """Blocks for a chunk of any size."""
        return [self.block(chunk[i:i + MAX_BLOCK]) for i in range(0, len(chunk), MAX_BLOCK)]


def parse_header(header: bytes, remaining: int) -> tuple[int, int]:
    """(stored length, NAR length) of a block whose NAR bytes must fit in `remaining`."""
    stored, size = BLOCK.unpack(header)
    if size > MAX_BLOCK or size > remaining or stored > size or (size and not stored):
        raise CompressionError(f"bad block header: {stored} stored bytes for {size} of at most "
                               f"{min(MAX_BLOCK, remaining)}")
    return stored, size


def unpack(stored: bytes, size: int) -> bytes:
    """The NAR bytes of a block; a zstd frame never yields more than the header promised."""
    if len(stored) == size:
        return stored
    try:
        declared = zstandard.frame_content_size(stored)  # allocated up front, so checked first
        if declared not in (size, -1):
            raise CompressionError(f"block declares {declared} bytes, not {size}")
        data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
    except zstandard.ZstdError as error:
        raise CompressionError(f"block does not decompress: {error}") from None
    if len(data) != size:
        raise CompressionError(f"block decompressed to {len(data)} bytes, not {size}")
    return data
