"""The NAR writer against `nix-store --dump`, byte for byte, on trees that trip up writers."""

import hashlib
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerix.nix import nar

from conftest import ROOT, requires_nix

pytestmark = requires_nix


def nix_dump(path: Path) -> bytes:
    return subprocess.run(["nix-store", "--dump", str(path)], capture_output=True, check=True).stdout


def ours(path: Path, chunk_size: int = nar.CHUNK_SIZE) -> bytes:
    return b"".join(nar.dump(os.fsencode(path), chunk_size))


def make_tricky_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "nested/deeper/deepest").mkdir(parents=True)
    (tree / "empty-dir").mkdir()
    (tree / "empty-file").write_bytes(b"")
    (tree / "seven").write_bytes(b"1234567")
    (tree / "eight").write_bytes(b"12345678")
    (tree / "nested/deeper/deepest/leaf").write_bytes(b"leaf\n")
    exe = tree / "run me"
    exe.write_text("#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    group_exec_only = tree / "group-exec-only"  # Nix looks at the owner's x bit only
    group_exec_only.write_text("x")
    group_exec_only.chmod(0o654)
    (tree / "ünïcödé näme").write_text("unicode\n")
    (tree / "B-upper-sorts-first").write_text("b")
    (tree / "link-to-file").symlink_to("seven")
    (tree / "link-to-dir").symlink_to("nested/deeper")
    (tree / "dangling").symlink_to("/does/not/exist")
    (tree / "nested/abs-link").symlink_to("/etc/hostname")
    (tree / "nested/many").mkdir()
    for i in range(300):
        (tree / "nested/many" / f"f{i:03d}").write_bytes(os.urandom(i % 97))
    (tree / "odd-size").write_bytes(os.urandom(1_000_003))
    return tree


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, nar.CHUNK_SIZE])
def test_tricky_tree_matches_nix_store_dump(tmp_path: Path, chunk_size: int) -> None:
    tree = make_tricky_tree(tmp_path)
    expected = nix_dump(tree)
    assert ours(tree, chunk_size) == expected
    assert nar.hash_path(os.fsencode(tree)) == (hashlib.sha256(expected).digest(), len(expected))


@pytest.mark.parametrize("kind", ["empty-file", "file", "executable", "symlink", "dangling", "empty-dir"])
def test_single_node_roots(tmp_path: Path, kind: str) -> None:
    node = tmp_path / kind
    if kind == "empty-file":
        node.write_bytes(b"")
    elif kind in ("file", "executable"):
        node.write_bytes(b"contents\n")
        node.chmod(0o555 if kind == "executable" else 0o444)
    elif kind == "symlink":
        (tmp_path / "target").write_text("t")
        node.symlink_to("target")
    elif kind == "dangling":
        node.symlink_to("nowhere")
    else:
        node.mkdir()
    assert ours(node) == nix_dump(node)


def test_chunks_are_bounded(tmp_path: Path) -> None:
    tree = make_tricky_tree(tmp_path)
    sizes = [len(chunk) for chunk in nar.dump(os.fsencode(tree), 4096)]
    assert max(sizes) <= 4096 + 8 * 1024  # a chunk may carry one more framing segment
    assert sum(sizes) == len(nix_dump(tree))


def test_byte_ranges_match_slices_of_nix_store_dump(tmp_path: Path) -> None:
    tree = make_tricky_tree(tmp_path)
    expected = nix_dump(tree)
    size = len(expected)
    rng = random.Random(7)
    ranges = [(0, size), (0, 1), (size - 1, size), (size, size), (8, 16), (12345, 1_000_000),
              *((a, rng.randint(a, size)) for a in (rng.randrange(size) for _ in range(40)))]
    for start, end in ranges:
        for chunk_size in (4096, nar.CHUNK_SIZE):
            got = list(nar.byte_range(nar.segments(os.fsencode(tree)), start, end, chunk_size))
            assert b"".join(got) == expected[start:end], (start, end, chunk_size)
            assert all(len(chunk) < 2 * chunk_size for chunk in got)


def test_consecutive_ranges_on_a_cursor_walk_the_tree_once(tmp_path: Path) -> None:
    tree = make_tricky_tree(tmp_path)
    expected = nix_dump(tree)
    walked = []

    def counted() -> Iterator[nar.Segment]:
        for part in nar.segments(os.fsencode(tree)):
            walked.append(part)
            yield part

    cursor = nar.SegmentCursor(counted())
    cuts = [0, 5, 777, 12_000, 500_000, 1_000_500, len(expected)]
    ranges = list(itertools.pairwise(cuts))
    assert [b"".join(nar.byte_range(cursor, a, b, 4096)) for a, b in ranges] == [expected[a:b] for a, b in ranges]
    assert len(walked) == len(list(nar.segments(os.fsencode(tree))))  # every segment taken once
    with pytest.raises(ValueError):
        list(nar.byte_range(cursor, 10, 20))  # behind the cursor: the caller starts a new walk


def test_byte_range_never_opens_files_outside_the_range() -> None:
    parts = [b"head", nar.FileContents(b"/does/not/exist", 100), b"tail"]
    assert b"".join(nar.byte_range(parts, 104, 108)) == b"tail"
    assert b"".join(nar.byte_range(parts, 1, 4)) == b"ead"
    with pytest.raises(FileNotFoundError):
        b"".join(nar.byte_range(parts, 50, 108))


def test_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(nar.NarError, match="not a regular file"):
        ours(tmp_path)


def test_file_that_changed_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    for claimed in (50, 150):
        part = nar.FileContents(os.fsencode(path), claimed)
        readers = [lambda: list(nar.coalesce([part], 1000)), lambda: list(nar.read_file(part, 64)),
                   lambda: nar.open_file(part)]
        for read in readers:
            with pytest.raises(nar.NarError, match="changed size"):
                read()


def test_coalesce_passes_large_files_through(tmp_path: Path) -> None:
    tree = make_tricky_tree(tmp_path)
    parts = list(nar.coalesce(nar.segments(os.fsencode(tree)), 4096))
    large = [part for part in parts if isinstance(part, nar.FileContents)]
    assert [part.size for part in large] == [1_000_003]
    assert all(len(part) <= 4096 + 8 * 1024 for part in parts if isinstance(part, bytes))


def test_large_file_streams_in_small_memory(tmp_path: Path) -> None:
    """A 120 MB file: same bytes as Nix, and the writer's peak RSS grows by far less than the file."""
    big = tmp_path / "big"
    with open(big, "wb") as file:
        for _ in range(120):
            file.write(os.urandom(1 << 20))
    nix_digest = hashlib.sha256(nix_dump(big)).hexdigest()
    probe = (
        "import hashlib, os, resource, sys\n"
        "from peerix.nix import nar\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "h = hashlib.sha256()\n"
        "for chunk in nar.dump(os.fsencode(sys.argv[1])): h.update(chunk)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(h.hexdigest(), after - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(big)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    digest, grown_kib = out[0], int(out[1])
    assert digest == nix_digest
    assert grown_kib < 16 * 1024, f"peak RSS grew by {grown_kib} KiB while streaming 120 MiB"
