"""The NAR cache: whole NARs of small-file paths, verified before use, bounded, served zero-copy."""

import hashlib
import os
import time
from pathlib import Path

import httpx

from peerix.nix import nar
from peerix.nix.narinfo import NarInfo
from peerix.store.narcache import NarCache, NarCacheWriter
from peerix.store.substituter import _teed

from conftest import offline, requires_nix
from nixtools import closure_of, hash_part, run


def put(cache: NarCache, data: bytes) -> bytes:
    """Offer `data` twice (admission wants a second request) and publish it; return its hash."""
    digest = hashlib.sha256(data).digest()
    assert cache.writer(digest, len(data)) is None  # first request: not admitted
    writer = cache.writer(digest, len(data))
    assert isinstance(writer, NarCacheWriter)
    writer.write(data)
    assert writer.finish()
    cache.publish(writer)
    return digest


def test_entries_are_bounded_and_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = NarCache(tmp_path / "c", max_bytes=8000)
    first, second = put(cache, b"a" * 900), put(cache, b"b" * 900)
    assert cache.lookup(first, 900) is not None  # touch: second is now the oldest
    for i in range(8):
        put(cache, bytes([i]) * 900)
    assert cache.total_bytes <= 8000 and cache.evicted >= 2
    assert cache.lookup(second, 900) is None
    assert len(list((tmp_path / "c").iterdir())) == cache.entries


def test_wrong_contents_are_never_published(tmp_path: Path) -> None:
    cache = NarCache(tmp_path / "c", max_bytes=1 << 20)
    digest = hashlib.sha256(b"right").digest()
    cache.writer(digest, 5)
    writer = cache.writer(digest, 5)
    writer.write(b"wrong")
    assert not writer.finish()
    assert cache.lookup(digest, 5) is None and list((tmp_path / "c").iterdir()) == []


def test_restart_keeps_entries_and_drops_leftovers(tmp_path: Path) -> None:
    cache = NarCache(tmp_path / "c", max_bytes=1 << 20)
    digest = put(cache, b"x" * 100)
    (tmp_path / "c" / ".tmp-crashed").write_bytes(b"partial")
    again = NarCache(tmp_path / "c", max_bytes=1 << 20)
    assert again.lookup(digest, 100) is not None and again.lookup(digest, 99) is None
    assert not (tmp_path / "c" / ".tmp-crashed").exists()


def test_nars_with_large_files_or_cut_short_are_not_kept(tmp_path: Path) -> None:
    cache = NarCache(tmp_path / "c", max_bytes=1 << 30)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 3000)
    parts = list(nar.coalesce(nar.segments(os.fsencode(big)), 1024))
    assert any(isinstance(p, nar.FileContents) for p in parts)
    digest = hashlib.sha256(b"".join(nar.dump(os.fsencode(big)))).digest()
    cache.writer(digest, 3000)
    writer = cache.writer(digest, 3000)
    assert list(_teed(iter(parts), writer)) == parts
    assert not writer.finish()
    small = cache.writer(b"s" * 32, 10), cache.writer(b"s" * 32, 10)
    teed = _teed(iter([b"12345", b"67890"]), small[1])
    next(teed)
    teed.close()  # the client went away
    assert not small[1].finish()
    assert [p.name for p in (tmp_path / "c").iterdir()] == []


@requires_nix
def test_served_twice_then_from_the_cache(start_daemon, host_a: Path, closure: Path, keypair, tmp_path: Path) -> None:
    state = tmp_path / "state"
    served = start_daemon("serve", "--store-root", str(host_a), "--sign-key-file", str(keypair[0]), *offline(state))
    lib = next(p for p in closure_of(closure) if "peerix-test-lib" in p)
    info = NarInfo.parse(httpx.get(f"{served.url}/{hash_part(lib)}.narinfo").text)
    expected = run("nix-store", "--dump", lib).stdout
    for _ in range(2):
        assert httpx.get(f"{served.url}/{info.url}").content == expected
    deadline = time.monotonic() + 5  # publishing finishes just after the second response
    while "peerix_nar_cache_stored_total 1.0" not in httpx.get(served.url + "/metrics").text:
        assert time.monotonic() < deadline, "the NAR was not cached after its second request"
        time.sleep(0.02)
    assert httpx.get(f"{served.url}/{info.url}").content == expected
    assert "peerix_nar_cache_hits_total 1.0" in httpx.get(served.url + "/metrics").text
    cached = list((state / "nar-cache").glob("*.nar"))
    assert [p.read_bytes() for p in cached] == [expected]
    assert httpx.get(served.url + "/health").json()["nar_cache"] == {"entries": 1, "bytes": len(expected)}

    run("nix-store", "--store", str(host_a), "--delete", str(closure), lib)
    assert httpx.get(f"{served.url}/{info.url}").status_code == 404  # cached, but no longer in the store
