"""Which listings a host serves for peers' paths: only those of NARs that went through whole, which
for a peer's NAR means it matched its NarHash (the transfer raises before its last chunk otherwise)."""

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peerix.nix import nar
from peerix.nix.listing import render, tree_listing
from peerix.store.listings import Listings


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir" / "deeper").mkdir(parents=True)
    for n in range(50):
        (root / "dir" / f"file {n}").write_bytes(os.urandom(n * 37))
    (root / "dir" / "deeper" / "run").write_bytes(b"#!/bin/sh\n")
    (root / "dir" / "deeper" / "run").chmod(0o755)
    (root / "link").symlink_to("dir/deeper")
    return root


async def chunks(data: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 333):
        yield data[start:start + 333]
    if error is not None:
        raise error


async def drain(listings: Listings, source: AsyncIterator[bytes], key: bytes, stop_after: int | None = None) -> bytes:
    passed = b""
    async with contextlib.aclosing(listings.proving(source, key)) as out:
        async for chunk in out:
            passed += chunk
            if stop_after is not None and len(passed) >= stop_after:
                break
    return passed


async def test_only_a_nar_that_went_through_whole_is_listed(tree: Path) -> None:
    data = b"".join(nar.dump(os.fsencode(tree)))
    listings = Listings()
    try:
        assert await drain(listings, chunks(data), b"whole") == data  # the bytes pass unchanged
        assert listings.get(b"whole") == render(tree_listing(os.fsencode(tree)))
        with pytest.raises(OSError, match="NarHash"):  # what a transfer raises when the hash does not match
            await drain(listings, chunks(data, OSError("does not match its NarHash")), b"failed")
        assert listings.get(b"failed") is None
        await drain(listings, chunks(data), b"left", stop_after=len(data) // 2)  # the client went away
        assert listings.get(b"left") is None
        await drain(listings, chunks(data[:100] + b"x" * 8 + data[108:]), b"garbled")  # not a NAR
        assert listings.get(b"garbled") is None
    finally:
        listings.close()


def test_listings_are_kept_within_their_budget() -> None:
    listings = Listings(budget=100)
    for n in range(5):
        listings.put(bytes([n]), b"x" * 40)
    assert [listings.get(bytes([n])) is not None for n in range(5)] == [False, False, False, True, True]
    listings.put(b"huge", b"x" * 101)
    assert listings.get(b"huge") is None
    listings.close()
