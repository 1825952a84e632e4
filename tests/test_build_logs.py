"""Build logs as this host reads them from Nix's log directory: bzip2ed or plain, the end of a long
one, and nothing (rather than an error) for one that is missing or broken."""

import bz2
from pathlib import Path

import pytest

from peerix.nix.storepath import StorePath
from peerix.store.local import LocalStore

DRV = StorePath.derivation("0123456789abcdfghijklmnpqrsvwxyz-hello.drv")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path)  # reading logs needs no database


def write_log(store: LocalStore, data: bytes, suffix: str = "") -> Path:
    """Where Nix 2.8 writes it: drvs/<first 2 chars>/<rest of the basename>[.bz2]."""
    path = store.log_dir / DRV.basename[:2] / (DRV.basename[2:] + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", ["", ".bz2"])
def test_a_log_is_read_whole_compressed_or_not(store: LocalStore, suffix: str) -> None:
    text = b"".join(b"line %d of the build\n" % n for n in range(5000))
    write_log(store, bz2.compress(text) if suffix else text, suffix)
    assert store.read_build_log(DRV, 1 << 20) == text


def test_a_long_log_keeps_its_end_after_a_note(store: LocalStore) -> None:
    text = bytes(range(256)) * 10_000  # 2,560,000 bytes, read in 1 MiB chunks
    write_log(store, text)
    read = store.read_build_log(DRV, 1_000_000)
    note, _, kept = read.partition(b"\n")
    assert kept == text[-1_000_000:]
    assert note == b"[peerix: the first 1560000 bytes of this log are left out]"


def test_a_missing_or_broken_log_is_none(store: LocalStore) -> None:
    assert store.read_build_log(DRV, 1 << 20) is None
    write_log(store, b"BZh9 not really bzip2", ".bz2")
    assert store.read_build_log(DRV, 1 << 20) is None
