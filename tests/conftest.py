import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from peerix.cli.localfleet import free_port  # noqa: F401 (the tests import it from here)

from nixtools import HERE, build, copy_to, why_no_nix
from postgres import PostgresServer, why_no_postgres

ROOT = HERE.parent

# The tests' Nix is configured here, not by the machine's /etc/nix/nix.conf (scripts/dev sets the same).
os.environ.setdefault("NIX_CONF_DIR", str(ROOT / "scripts" / "nix"))

requires_nix = pytest.mark.skipif(why_no_nix() is not None, reason=why_no_nix() or "")


@pytest.fixture(autouse=True)
def _own_nix_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix caches narinfo lookups (misses for an hour) under XDG_CACHE_HOME: never share them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def offline(state_dir: Path) -> list[str]:
    """Flags for a daemon under test: its own state, iroh and the fast path on loopback, no relays,
    discovery, LAN or upstream."""
    return ["--state-dir", str(state_dir), "--iroh-listen", "127.0.0.1:0", "--fast-path-listen", "127.0.0.1:0",
            "--no-relays", "--no-discovery", "--no-lan", "--upstream", "none"]


def peerix(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peerix.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, **kw)


class Daemon:
    """A real `peerix serve` process, its log kept for assertions."""

    def __init__(self, args: list[str], log_path: Path, host: str = "127.0.0.1", env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "peerix.cli", *args, "--listen", f"{host}:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"peerix did not start:\n{self.log}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    daemons: list[Daemon] = []

    def start(*args: str, host: str = "127.0.0.1", env: dict | None = None) -> Daemon:
        daemon = Daemon(list(args), tmp_path / f"peerix-{len(daemons)}.log", host, env)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture(scope="session")
def closure() -> Path:
    """The top path of a small multi-path closure of derivation outputs, built in the root store."""
    if why_no_nix():
        pytest.skip(why_no_nix())
    return build(HERE / "nix" / "closure.nix", seed=os.environ.get("PEERIX_TEST_SEED", "1"))


@pytest.fixture(scope="session")
def big_path() -> Path:
    """A 64 MiB random file as a store path (built once; Nix keeps it for later sessions)."""
    if why_no_nix():
        pytest.skip(why_no_nix())
    return build(HERE / "nix" / "big.nix")


@pytest.fixture
def host_a(tmp_path: Path, closure: Path) -> Path:
    """A chroot store root holding the test closure."""
    root = tmp_path / "hostA"
    copy_to(root, closure)
    return root


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    secret, public = tmp_path / "key.sec", tmp_path / "key.pub"
    result = peerix("keygen", "test-host-1", "--secret-file", str(secret), "--public-file", str(public))
    assert result.returncode == 0, result.stderr
    return secret, public


# The tracker's storage backends: every tracker test runs on each (`backend` is parametrised).
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's own PostgreSQL server (each test makes databases of its own); removed at the end."""
    if why := why_no_postgres():
        pytest.skip(why)
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def new_database(request: pytest.FixtureRequest, backend: str, directory: Path, name: str) -> Path | str:
    """A fresh database for a tracker: an SQLite file in `directory`, or a new PostgreSQL database's URL."""
    if backend == "sqlite":
        return directory / f"{name}.db"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def tracker_db(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Callable[..., Path | str]:
    """Make a fresh database of the test's backend: `tracker_db(name)`."""
    return lambda name="tracker": new_database(request, backend, tmp_path, name)


@pytest.fixture
def start_tracker(tmp_path: Path, tracker_db: Callable[..., Path | str]) -> Iterator:
    """Start real `peerix-tracker serve` processes (see trackertools), each on a database of its own unless
    `db` names one (replicas); all are stopped after the test."""
    from trackertools import UNLIMITED, TrackerProcess

    trackers: list[TrackerProcess] = []
    numbers = itertools.count()  # tests may start trackers from several threads at once

    def start(*args: str, limits: tuple[str, ...] = UNLIMITED, host: str = "127.0.0.1",
              db: Path | str | None = None, https: Path | bool = False, env: dict[str, str] | None = None
              ) -> TrackerProcess:
        name = f"tracker-{next(numbers)}"
        tracker = TrackerProcess(db or tracker_db(name), tmp_path / f"{name}.log", (*limits, *args), host, env,
                                 https=https)
        trackers.append(tracker)
        return tracker

    yield start
    for tracker in trackers:
        tracker.stop()


@pytest.fixture
def fleet(tmp_path: Path):
    """A local fleet with a running tracker; hosts are added by the test."""
    from peerix.cli.localfleet import LocalFleet
    fleet = LocalFleet(tmp_path)
    fleet.start_tracker()
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless Chromium for a module's tests (its first start costs seconds)."""
    from browser import CHROMIUM, Browser
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/dev test installs it)")
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    yield chromium
    chromium.close()
