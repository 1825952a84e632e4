"""A fleet of separate hosts on one machine: a tracker in a network namespace of its own, and hosts in
theirs, each with a chroot store, a host key and a peerix daemon on the same ports as every other.
Shared by tests/rollout.py and tests/soak.py.

The tracker can be killed, restarted on the same database and address, or frozen (SIGSTOP), and so can
each daemon; every process is stopped when the fleet closes.
"""

import signal
import subprocess
import sys
from pathlib import Path

from netns import Host, Network, wait_for

from peerix.common.secrets import write_secret
from peerix.nix.signing import SecretKey

from nixtools import run

TRACKER_PORT = 12305
DAEMON = "http://127.0.0.1:12304"  # every host's daemon, as its own Nix reaches it


class NsFleet:
    def __init__(self, root: Path, subnet: str) -> None:
        self.root = root
        self.net = Network(subnet=subnet)
        self.hosts: dict[str, Host] = {}
        self.keys: dict[str, SecretKey] = {}
        self.daemons: dict[str, subprocess.Popen] = {}
        try:
            self.tracker_host = self.net.add_host("tr")
        except BaseException:
            self.net.close()
            raise
        self.tracker_url = f"http://{self.tracker_host.addresses[0]}:{TRACKER_PORT}"
        self.tracker: subprocess.Popen | None = None
        self.tracker_db: Path | str = root / "tracker.db"

    def add_host(self, name: str, on_switch: bool = True) -> Host:
        self.hosts[name] = host = self.net.add_host(name, on_switch)
        self.keys[name] = SecretKey.generate(f"{name}-1")
        return host

    def home(self, name: str) -> Path:
        return self.root / name

    def store(self, name: str) -> Path:
        return self.home(name) / "store"

    def start_tracker(self, db: Path | str | None = None, *extra: str) -> None:
        """On `db` (an SQLite file or a PostgreSQL URL; by default the last one), answering once it is up."""
        self.tracker_db = db or self.tracker_db
        self.tracker = self.tracker_host.start(
            [sys.executable, "-m", "tracker.cli", "serve", "--db", str(self.tracker_db), "--listen",
             f"{self.tracker_host.addresses[0]}:{TRACKER_PORT}", *extra], self.root / "tracker.log")
        wait_for(lambda: self.tracker_host.run("curl", "-sf", f"{self.tracker_url}/health", check=False)
                 .returncode == 0)

    def kill_tracker(self) -> None:
        _kill(self.tracker)

    def freeze_tracker(self, frozen: bool) -> None:
        """SIGSTOP: it accepts connections (the kernel does) and answers nothing, until SIGCONT."""
        self.tracker.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def start(self, name: str, *extra: str) -> subprocess.Popen:
        """The host's daemon (its log appended to), with iroh on every interface and the tracker."""
        host, home = self.hosts[name], self.home(name)
        if not (home / "host.sec").exists():
            home.mkdir(parents=True, exist_ok=True)
            write_secret(home / "host.sec", self.keys[name].to_text())
            run("nix-store", "--store", str(self.store(name)), "--init")
        self.daemons[name] = host.peerix(
            "serve", "--store-root", str(self.store(name)), "--state-dir", str(home / "state"),
            "--sign-key-file", str(home / "host.sec"), "--name", name, "--tracker", self.tracker_url,
            "--no-relays", "--no-discovery", "--iroh-listen", "0.0.0.0:12305", *extra, log=home / "peerix.log")
        return self.daemons[name]

    def wait_healthy(self, name: str) -> None:
        wait_for(lambda: self.hosts[name].run("curl", "-sf", f"{DAEMON}/health", check=False).returncode == 0)

    def kill(self, name: str) -> None:
        """SIGKILL the host's daemon."""
        _kill(self.daemons.pop(name))

    def log(self, name: str) -> str:
        return (self.home(name) / "peerix.log").read_text(errors="replace")

    def metric(self, name: str, prefix: str) -> float:
        """The first sample of the host's daemon whose line starts with `prefix`, else 0."""
        for line in self.hosts[name].get(f"{DAEMON}/metrics").splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def close(self) -> None:
        if self.tracker is not None and self.tracker.poll() is None:
            self.freeze_tracker(False)  # a frozen process takes SIGTERM only once it runs again
        self.net.close()


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
