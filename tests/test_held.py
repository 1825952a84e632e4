"""Held paths (pulled through from the upstream) and compressed NARs inflated on the way."""

import asyncio
import bz2
import hashlib
import lzma
import os
import random
from pathlib import Path

import pytest
import zstandard

from peerix.net.inflate import InflateError, inflate
from peerix.nix.narinfo import NarInfo
from peerix.nix.storepath import StorePath
from peerix.store.held import HeldError, HeldPaths


def info_of(data: bytes, name: str = "a") -> NarInfo:
    return NarInfo(store_path=StorePath(hashlib.sha256(name.encode()).hexdigest()[:32].translate(
        str.maketrans("eotu", "0123")), name), nar_hash=hashlib.sha256(data).digest(), nar_size=len(data),
        url="nar/x.nar", sigs=("upstream-1:c2ln",))


async def test_readers_follow_a_growing_nar_and_the_last_chunk_waits_for_the_hash(tmp_path: Path) -> None:
    held = HeldPaths(tmp_path / "held", 1 << 20, "/nix/store")
    data = os.urandom(300_000)
    info = info_of(data)
    growing = held.begin(info)
    follower = asyncio.create_task(_collect(growing.read(1000)))
    verified = asyncio.create_task(_collect(growing.read(verified=True)))
    for start in range(0, len(data), 65536):
        growing.write(data[start:start + 65536])
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert not verified.done() and follower.done()  # everything but the held-back end
    assert follower.result() == data[1000:]
    growing.finish()
    assert await verified == data
    held.publish(growing, info.to_text())
    assert held.get(info.store_path.hash_part) == info and held.growing(info.store_path.hash_part) is None
    assert Path(os.fsdecode(held.nar_path(info.store_path.hash_part))).read_bytes() == data
    again = HeldPaths(tmp_path / "held", 1 << 20, "/nix/store")  # a restart keeps it
    assert again.get(info.store_path.hash_part) == info


async def test_a_wrong_nar_is_never_published_and_its_readers_fail(tmp_path: Path) -> None:
    held = HeldPaths(tmp_path / "held", 1 << 20, "/nix/store")
    info = info_of(b"right" * 100)
    growing = held.begin(info)
    reader = asyncio.create_task(_collect(growing.read(verified=True)))
    growing.write(b"wrong" * 100)
    with pytest.raises(HeldError, match="does not match"):
        growing.finish()
    held.abandon(growing)
    with pytest.raises(HeldError):
        await reader
    assert held.get(info.store_path.hash_part) is None and os.listdir(tmp_path / "held") == []
    with pytest.raises(HeldError, match="more bytes"):
        held.begin(info).write(b"x" * 501)


async def test_held_paths_are_bounded_and_leftovers_of_a_crash_go(tmp_path: Path) -> None:
    held = HeldPaths(tmp_path / "held", 10_000, "/nix/store")
    infos = []
    for index in range(5):
        data = bytes([index]) * 3000
        info = info_of(data, f"p{index}")
        growing = held.begin(info)
        growing.write(data)
        growing.finish()
        held.publish(growing, info.to_text())
        infos.append(info)
        held.get(infos[0].store_path.hash_part)  # the first stays in use
    assert held.total_bytes <= 10_000 and held.evicted == 2
    assert held.get(infos[0].store_path.hash_part) and held.get(infos[1].store_path.hash_part) is None
    (tmp_path / "held" / ".tmp-crashed.nar").write_bytes(b"partial")
    (tmp_path / "held" / f"{infos[4].store_path.hash_part}.nar").write_bytes(b"cut")
    again = HeldPaths(tmp_path / "held", 10_000, "/nix/store")
    assert again.get(infos[4].store_path.hash_part) is None and again.entries == 2
    assert sorted(os.listdir(tmp_path / "held")) == sorted(
        f"{i.store_path.hash_part}{s}" for i in (infos[0], infos[3]) for s in (".nar", ".narinfo"))


async def _collect(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def _pieces(data: bytes):
    rng, position = random.Random(7), 0
    while position < len(data):
        size = rng.randint(1, 70_000)
        yield data[position:position + size]
        position += size


PLAIN = os.urandom(200_000) + b"nix" * 1_000_000
PACKED = {"none": PLAIN, "xz": lzma.compress(PLAIN), "bzip2": bz2.compress(PLAIN),
          "zstd": zstandard.ZstdCompressor().compress(PLAIN)}


@pytest.mark.parametrize("compression", sorted(PACKED))
async def test_compressed_nars_inflate_within_their_size(compression: str) -> None:
    assert await _collect(inflate(_pieces(PACKED[compression]), compression, len(PLAIN))) == PLAIN
    with pytest.raises(InflateError, match="inflates past"):
        await _collect(inflate(_pieces(PACKED[compression]), compression, len(PLAIN) - 1))


async def test_bombs_and_garbage_are_refused_in_bounded_memory() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 30))  # 1 GiB of zeros in ~32 KiB
    with pytest.raises(InflateError, match="inflates past"):
        await _collect(inflate(_pieces(bomb), "zstd", 1 << 20))
    for compression in ("xz", "bzip2"):
        with pytest.raises(InflateError, match="corrupt"):
            await _collect(inflate(_pieces(b"not compressed at all" * 100), compression, 1 << 20))
    with pytest.raises(InflateError, match="unknown compression"):
        await _collect(inflate(_pieces(b""), "br", 10))


async def test_a_reader_that_stops_stops_the_worker() -> None:
    chunks = inflate(_pieces(PACKED["xz"]), "xz", len(PLAIN))
    assert len(await anext(chunks)) > 0
    await chunks.aclose()  # the client went away: no thread is left waiting
    await asyncio.sleep(0.1)
    import threading
    assert not [t for t in threading.enumerate() if t.name.startswith("inflate-")]
