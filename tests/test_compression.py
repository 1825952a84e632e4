"""zstd between peers: the block format (pure), and real transfers that real Nix accepts."""

import json
import os
from pathlib import Path

import pytest
import zstandard
from test_peers import verify

from peerix.cli.localfleet import Host, LocalFleet
from peerix.net import compression, wire

from conftest import requires_nix
from nixtools import HERE, build


def roundtrip(data: bytes, compressor: compression.BlockCompressor) -> bytes:
    out = []
    for block in compressor.blocks(data):
        stored, size = compression.parse_header(block[:compression.BLOCK.size], 1 << 30)
        assert len(block) == compression.BLOCK.size + stored
        out.append(compression.unpack(block[compression.BLOCK.size:], size))
    return b"".join(out)


def test_blocks_round_trip_and_shrink_only_what_compresses() -> None:
    text = b"".join(os.urandom(64).hex().encode() for _ in range(40_000))  # 5 MB, more than one block
    compressor = compression.BlockCompressor()
    assert roundtrip(text, compressor) == text
    assert compressor.worth_it and compressor.stored_bytes < 0.6 * compressor.raw_bytes

    noise = os.urandom(3 << 20)
    compressor = compression.BlockCompressor()
    assert roundtrip(noise, compressor) == noise
    assert compressor.worth_it is False and compressor.stored_bytes == compressor.raw_bytes  # stored as is
    assert roundtrip(text[:100_000], compressor) == text[:100_000]  # and it stops trying
    assert compressor.stored_bytes == compressor.raw_bytes


def test_bombs_and_bad_headers_are_refused_before_allocating() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(256 << 20))  # 8 KB claiming 256 MiB
    with pytest.raises(compression.CompressionError, match="declares"):
        compression.unpack(bomb, 1 << 20)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8 << 20))
    with pytest.raises(compression.CompressionError):
        compression.unpack(unsized, 1 << 20)
    for stored, size, remaining in ((10, 5 << 20, 1 << 30), (10, 100, 50), (200, 100, 1000), (0, 100, 1000)):
        with pytest.raises(compression.CompressionError):
            compression.parse_header(compression.BLOCK.pack(stored, size), remaining)


def test_nar_requests_carry_the_zstd_wish() -> None:
    request = wire.NarRequest("h" * 32, "n" * 52, 5, 10, "prefer")
    assert json.loads(request.to_frame()[4:])["zstd"] == "prefer"
    assert wire.NarRequest.from_message({"hash": "h", "nar_hash": "n", "zstd": "prefer"}).zstd == "prefer"
    assert wire.NarRequest.from_message({"hash": "h", "nar_hash": "n", "zstd": "gzip"}).zstd is None
    assert b"zstd" not in wire.NarRequest("h", "n").to_frame()


def wire_received(on: Host) -> float:
    return on.metric('peerix_peer_wire_bytes_total{direction="received"}')


@requires_nix
@pytest.mark.parametrize("fetcher_setting", ["auto", "never"])
def test_a_capped_peer_compresses_what_compresses(fleet: LocalFleet, big_path: Path, fetcher_setting: str) -> None:
    text = build(HERE / "nix" / "compressible.nix", megabytes="4")
    a = fleet.host("a")
    a.give(str(text), str(big_path))
    a.start("--max-upload-rate", "40M")  # a slow uplink: it compresses for receivers that accept
    fleet.wait_announced(a, [str(text), str(big_path)])
    c = fleet.host("c")
    c.start("--compression", fetcher_setting)

    c.realise(str(text))
    verify(c, text)
    nar_bytes = c.metric("peerix_peer_received_bytes_total")
    if fetcher_setting == "never":
        assert wire_received(c) == nar_bytes
        assert "zstd" not in a.log
        return
    assert wire_received(c) < 0.5 * nar_bytes  # hex of random bytes: about 2.5x
    assert "zstd" in a.log

    before_wire, before_nar = wire_received(c), nar_bytes
    c.realise(str(big_path))  # random bytes: the first block shows it does not pay, the rest goes raw
    verify(c, big_path)
    nar = c.metric("peerix_peer_received_bytes_total") - before_nar
    assert nar > 60e6 and wire_received(c) - before_wire >= nar
