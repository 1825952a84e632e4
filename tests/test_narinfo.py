"""Narinfo and path info against what real Nix records and writes for the same paths."""

from dataclasses import replace
from pathlib import Path

import pytest

from peerix.nix.hash import parse_sha256
from peerix.nix.narinfo import NarInfo, NarInfoError
from peerix.nix.storepath import StorePath
from peerix.store.local import LocalStore
from peerix.store.substituter import nar_url

from conftest import requires_nix
from nixtools import closure_of, nix, path_info

HASH = "0jhgxrl38wfj801ik5d7xhris8ri658m"
NARHASH = "sha256:0jhgxrl38wfj801ik5d7xhris8ri658mzvbgp2pykza7dd67snjb"


def sample_text(**override: str) -> str:
    fields = {
        "StorePath": f"/nix/store/{HASH}-hello",
        "URL": "nar/abc.nar",
        "Compression": "none",
        "NarHash": NARHASH,
        "NarSize": "160",
        "References": f"{HASH}-hello {'1' * 32}-glibc",
        "Deriver": f"{'2' * 32}-hello.drv",
    }
    fields.update(override)
    return "".join(f"{key}: {value}\n" for key, value in fields.items() if value is not None) + "Sig: a:b\nSig: c:d\n"


def test_parse_serialize_round_trip() -> None:
    info = NarInfo.parse(sample_text())
    assert info.store_path == StorePath(HASH, "hello")
    assert info.sigs == ("a:b", "c:d")
    assert [ref.name for ref in info.references] == ["hello", "glibc"]
    assert NarInfo.parse(info.to_text()) == info
    assert info.fingerprint() == (
        f"1;/nix/store/{HASH}-hello;{NARHASH};160;/nix/store/{HASH}-hello,/nix/store/{'1' * 32}-glibc".encode()
    )


def test_missing_compression_means_bzip2_and_is_always_written() -> None:
    info = NarInfo.parse(sample_text(Compression=None))
    assert info.compression == "bzip2"
    assert "Compression: bzip2\n" in info.to_text()


def test_unknown_deriver_and_empty_references() -> None:
    info = NarInfo.parse(sample_text(Deriver="unknown-deriver", References=""))
    assert info.deriver is None and info.references == ()
    assert "References: \n" in info.to_text()


@pytest.mark.parametrize("override", [
    {"StorePath": None}, {"URL": None}, {"NarHash": None}, {"NarSize": None}, {"URL": ""},
    {"NarSize": "0"}, {"NarSize": "-1"}, {"NarSize": "ten"}, {"NarHash": "sha256:zzz"},
    {"NarHash": "md5:" + "0" * 32}, {"StorePath": "/etc/passwd"}, {"References": "../../etc"},
    {"Deriver": "not-a-path"}, {"FileSize": "-3"},
])
def test_invalid_narinfo_is_refused(override: dict) -> None:
    with pytest.raises(NarInfoError):
        NarInfo.parse(sample_text(**override))


def test_garbage_lines_are_refused() -> None:
    with pytest.raises(NarInfoError):
        NarInfo.parse("this is not a narinfo\n")
    with pytest.raises(NarInfoError):
        NarInfo.parse("StorePath: x\n" * 100_000)


@requires_nix
async def test_path_info_matches_nix_path_info(host_a: Path, closure: Path) -> None:
    expected = path_info(closure, store=str(host_a), recursive=True)
    assert len(expected) >= 3
    async with LocalStore(host_a) as store:
        for path, nix_info in expected.items():
            info = await store.query(Path(path).name[:32])
            assert info is not None
            assert info.store_path.full() == path
            assert info.nar_hash == parse_sha256(nix_info["narHash"])
            assert info.nar_size == nix_info["narSize"]
            assert sorted(ref.full() for ref in info.references) == sorted(nix_info["references"])
            assert (info.deriver.full() if info.deriver else None) == nix_info.get("deriver")
            assert info.registration_time == nix_info["registrationTime"]
            assert list(info.sigs) == nix_info.get("signatures", [])
            assert info.ca == nix_info.get("ca")
        assert await store.query("0" * 32) is None


@requires_nix
async def test_narinfo_equals_what_nix_copy_writes(tmp_path: Path, host_a: Path, closure: Path) -> None:
    """Every field of `nix copy --to file://...?compression=none` narinfo, URL aside: ours adds ?hash=."""
    cache = tmp_path / "cache"
    nix("copy", "--from", str(host_a), "--to", f"file://{cache}?compression=none", str(closure))
    async with LocalStore(host_a) as store:
        for path in closure_of(closure, store=str(host_a)):
            hash_part = Path(path).name[:32]
            written = (cache / f"{hash_part}.narinfo").read_text()
            theirs = NarInfo.parse(written)
            info = await store.query(hash_part)
            ours = NarInfo.uncompressed(info, nar_url(info))
            assert ours.url == theirs.url + f"?hash={hash_part}"
            assert replace(ours, url=theirs.url) == theirs  # every other field, signatures included
            assert ours.to_text().replace(ours.url, theirs.url) == written
            assert (cache / theirs.url).stat().st_size == ours.nar_size
