"""Narinfo and path info against what real Nix records and writes for the same paths."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from peerix.nix.hash import parse_sha256
from peerix.nix.narinfo import NarInfo, NarInfoError
from peerix.nix.storepath import StorePath
from peerix.store.local import LocalStore
from peerix.store.substituter import nar_url

from conftest import ROOT, requires_nix
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


@requires_nix
def test_unprivileged_reader_without_a_writer(tmp_path: Path, host_a: Path, closure: Path) -> None:
    """As the NixOS service: no write access to the database directory, and at first no writer
    holding the WAL open (nix-daemon is socket-activated). Reads must work, and see new paths once
    a writer shows up."""
    outside = Path(tempfile.mkdtemp(prefix="peerix-ro-"))  # pytest's own directories are private to root
    root = outside / "root"
    shutil.copytree(host_a, root, symlinks=True)
    db = root / "nix/var/nix/db/db.sqlite"
    for leftover in db.parent.glob("db.sqlite-*"):
        leftover.unlink()
    for path in (outside, root, root / "nix", root / "nix/var", root / "nix/var/nix", db.parent):
        path.chmod(0o755)
    probe = (
        "import asyncio, sys\n"
        "from peerix.store.local import LocalStore\n"
        "async def main():\n"
        "    async with LocalStore(sys.argv[1]) as store:\n"
        "        print(await store.count(), flush=True)\n"
        "        sys.stdin.readline()\n"
        "        print(await store.count(), flush=True)\n"
        "asyncio.run(main())\n"
    )
    reader = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-c", probe, str(root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert reader.stdout.readline().strip() == "3"
    writer = sqlite3.connect(db)  # a writer arrives: WAL files appear, a path is (pretend-)added
    writer.execute("PRAGMA journal_mode=WAL")
    row = writer.execute("SELECT path, hash, registrationTime, narSize FROM ValidPaths LIMIT 1").fetchone()
    writer.execute("INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, ?, ?)",
                   (row[0][:-1] + "Z", *row[1:]))
    writer.commit()
    out, _ = reader.communicate("\n", timeout=30)
    writer.close()
    shutil.rmtree(outside)
    assert out.strip() == "4"


@requires_nix
async def test_signatures_lists_every_path_by_name(host_a: Path, closure: Path) -> None:
    async with LocalStore(host_a) as store:
        listed = dict(await store.signatures())
    assert set(listed) == {Path(p).name for p in closure_of(closure, store=str(host_a))}
