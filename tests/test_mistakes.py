"""Mistakes a person makes in the first hour: each gets one line saying what is wrong, never a traceback,
and a failing command exits non-zero at once."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, offline, peerix, requires_nix
from nixtools import run


def one_line(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr (and no traceback): that line."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    if shutil.which("nix-store") is None:
        pytest.skip("needs nix-store")
    root = tmp_path / "store"
    run("nix-store", "--store", str(root), "--init")
    return root


def test_keygen_makes_the_secret_files_directory_private(tmp_path: Path) -> None:
    secret, public = tmp_path / "var/lib/peerix/cache.sec", tmp_path / "keys/cache.pub"
    result = peerix("keygen", "host-a.example.org-1", "--secret-file", str(secret), "--public-file", str(public))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert public.read_text() == result.stdout.strip()
    (tmp_path / "file").write_text("")
    blocked = peerix("keygen", "k-1", "--secret-file", str(tmp_path / "file/cache.sec"), "--public-file", str(public))
    assert one_line(blocked) == f"peerix: cannot make the directory of {tmp_path}/file/cache.sec: File exists"


def test_an_iroh_address_that_cannot_be_bound_is_one_line(empty_store: Path, keypair, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        for address, cause in ((f"127.0.0.1:{port}", "Address already in use"),
                               ("10.9.9.9:0", "Cannot assign requested address")):
            result = peerix("serve", "--store-root", str(empty_store), "--sign-key-file", str(keypair[0]),
                            *offline(tmp_path / "state"), "--iroh-listen", address,
                            "--listen", f"127.0.0.1:{free_port()}")
            line = one_line(result)
            assert line.startswith(f"peerix: cannot listen for peers on UDP {address}: {cause}"), line


def test_a_store_whose_database_is_not_one_stops_at_once(empty_store: Path, tmp_path: Path) -> None:
    def serve(root: Path) -> tuple[subprocess.CompletedProcess, float, bytes | None]:
        notify = tmp_path / f"notify-{root.name}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
            systemd.bind(str(notify))
            systemd.settimeout(0)
            started = time.monotonic()
            result = peerix("serve", "--store-root", str(root), *offline(tmp_path / f"state-{root.name}"),
                            "--listen", f"127.0.0.1:{free_port()}", timeout=30,
                            env={**os.environ, "NOTIFY_SOCKET": str(notify)})
            seconds = time.monotonic() - started
            try:
                message = systemd.recv(4096)
            except BlockingIOError:
                message = None
        return result, seconds, message

    _, reference, _ = serve(tmp_path / "missing")  # refused before anything is opened: the startup cost alone
    (empty_store / "nix/var/nix/db/db.sqlite").write_text("this is not a database\n" * 100)
    result, seconds, message = serve(empty_store)
    assert "is not a readable Nix database" in one_line(result)
    assert seconds < reference + 1, (seconds, reference)  # it exits, within a second of the startup cost
    assert message is None  # under systemd no READY=1: the unit fails
    assert not (tmp_path / "state-store").exists()  # nothing written: no host key, no state directory


@requires_nix
def test_fetch_through_a_daemon_that_is_not_there(closure: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "peerix.cli", "fetch", "--url", "http://127.0.0.1:1", str(closure)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert one_line(result).startswith("peerix fetch: cannot ask the daemon at http://127.0.0.1:1: ")


def test_status_of_a_tracker_says_it_is_no_daemon(start_tracker) -> None:
    tracker = start_tracker()
    line = one_line(peerix("status", "--url", tracker.url))
    assert line.startswith(f"peerix: {tracker.url} is not a peerix daemon"), line


def test_an_unknown_lan_interface_is_one_line(empty_store: Path, keypair, tmp_path: Path) -> None:
    result = peerix("--log-level", "warning", "serve", "--store-root", str(empty_store), "--sign-key-file",
                    str(keypair[0]), *offline(tmp_path / "state"), "--lan", "--lan-port", str(free_port()),
                    "--lan-interface", "nosuch0", "--listen", f"127.0.0.1:{free_port()}")
    line = one_line(result)
    assert line.startswith("peerix: LAN discovery: there is no interface nosuch0 (this host has ") and "lo" in line


def test_peers_says_when_there_are_none(start_daemon, empty_store: Path, keypair, tmp_path: Path) -> None:
    daemon = start_daemon("serve", "--store-root", str(empty_store), "--sign-key-file", str(keypair[0]),
                          *offline(tmp_path / "state"))
    result = peerix("peers", "--url", daemon.url)
    assert result.returncode == 0 and result.stdout.startswith("no peers known yet: "), result.stdout


def dev(*args: str, path: Path, venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts/dev"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{path}:{os.environ['PATH']}", "PEERIX_VENV": str(venv)})


def test_dev_help_and_a_bench_without_a_name_install_nothing(tmp_path: Path) -> None:
    # Every package looks missing and installing fails loudly: only a command that tries would notice.
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("dpkg-query", "apt-get", "sudo"):
        (fake / tool).write_text(f"#!/bin/sh\necho {tool} called >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    venv = tmp_path / "venv"  # an installed venv, so that setup has nothing to do for Python
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to(sys.executable)
    (venv / ".peerix-installed").touch()

    helped = dev("help", path=fake, venv=venv)
    assert helped.returncode == 0 and helped.stdout.startswith("One entry point")
    assert "set -euo" not in helped.stdout and "#" not in helped.stdout
    bench = dev("bench", path=fake, venv=venv)
    assert bench.returncode == 2 and "called" not in bench.stderr, bench.stderr
    names = sorted(path.stem for path in (ROOT / "bench").glob("*.py") if path.stem != "harness")
    assert bench.stderr == f"usage: scripts/dev bench NAME; NAME is one of: {' '.join(names)}\n"


def test_a_fleet_token_or_tracker_ca_that_cannot_be_used_is_one_line(empty_store: Path, keypair,
                                                                     tmp_path: Path) -> None:
    short, public = tmp_path / "short.token", tmp_path / "public.token"
    short.write_text("guessable\n")
    short.chmod(0o600)
    public.write_text("a-fleet-token-anyone-can-read\n")
    public.chmod(0o644)

    def serve(*extra: str) -> str:
        return one_line(peerix("serve", "--store-root", str(empty_store), "--sign-key-file", str(keypair[0]),
                               *offline(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}", *extra))

    assert serve("--fleet-token-file", str(short)) == (
        f"peerix: {short}: fleet tokens must be at least 16 characters, one a line (peerix-tracker token makes one)")
    assert serve("--fleet-token-file", str(public)).startswith(f"peerix: {public} is readable by everyone")
    missing = tmp_path / "no-such-ca.pem"
    assert serve("--tracker", "https://127.0.0.1:1", "--tracker-ca-file", str(missing)) == (
        f"peerix: tracker CA file {missing}: No such file or directory")
    assert not (tmp_path / "state").exists()  # refused before a host key or anything else was written
