"""Several peerix hosts on one machine: a tracker and daemons, each host a chroot store.

What the demo and the benchmarks stand on: real processes on loopback, real Nix, iroh without
relays or discovery. Every process is stopped (SIGTERM, then SIGKILL) when the fleet closes.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..common.secrets import write_secret
from ..nix.signing import SecretKey


class FleetError(Exception):
    pass


def run(*args: str, input: bytes | None = None) -> str:
    result = subprocess.run(args, capture_output=True, input=input)
    if result.returncode != 0:
        raise FleetError(f"{' '.join(args[:4])} ... failed:\n{result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()



def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A free loopback port outside the kernel's ephemeral range. A port from that range (what binding
    port 0 gives) can be taken by any outgoing connection while a host is down, and the host, started
    again on its ports, would then fail to bind."""
    ephemeral = _ephemeral_ports()
    ports = [port for port in range(20000, 65536) if port not in ephemeral] or [0]
    for port in random.sample(ports, min(len(ports), 100)):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise FleetError("no free port")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise FleetError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _healthy(url: str, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise FleetError(f"{process.args[2]} exited with {process.returncode}")
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


class Host:
    def __init__(self, fleet: "LocalFleet", name: str) -> None:
        self.fleet = fleet
        self.name = name
        self.home = fleet.root / name
        self.store = self.home / "store"
        self.key = SecretKey.generate(f"{name}-peerix-1")
        self.home.mkdir(parents=True)
        write_secret(self.home / "host.key", self.key.to_text())
        run("nix-store", "--store", str(self.store), "--init")
        # Chosen once: a host started again comes back on the same ports, as a restarted service does.
        self.port, self.iroh_port = free_port(), free_port(socket.SOCK_DGRAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def give(self, *paths: str) -> None:
        """Copy paths with their closures into this host's store, signed with the fleet's key."""
        run("nix", "copy", "--no-check-sigs", "--to", str(self.store), *paths)
        run("nix", "store", "sign", "--store", str(self.store), "--key-file", str(self.fleet.cluster_file), "-r",
            *paths)

    def start(self, *extra: str, config: Path | None = None) -> None:
        """Start the daemon: it trusts the fleet's key, or what the `config` file says."""
        trust = ["--config", str(config)] if config else ["--trusted-public-keys", self.fleet.cluster.public.to_text()]
        args = [
            sys.executable, "-m", "peerix.cli", "--log-level", self.fleet.log_level, "serve",
            "--store-root", str(self.store), "--state-dir", str(self.home / "state"),
            "--sign-key-file", str(self.home / "host.key"), "--name", self.name, "--listen", f"127.0.0.1:{self.port}",
            "--iroh-listen", f"127.0.0.1:{self.iroh_port}", "--fast-path-listen", "127.0.0.1:0", "--no-relays",
            "--no-discovery", "--no-lan", "--upstream", "none", *trust, *extra,
        ]
        for url in self.fleet.tracker_urls:
            args += ["--tracker", url]
        self.process = self.fleet.spawn(args, self.home / "peerix.log")
        wait_until(lambda: _healthy(self.url, self.process), f"{self.name}'s daemon")

    def stop(self) -> None:
        if self.process is not None:
            self.fleet.terminate(self.process)
            self.process = None

    @property
    def log(self) -> str:
        return (self.home / "peerix.log").read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    @property
    def peer_id(self) -> str:
        return self.health()["network"]["peer_id"]

    def metric(self, line_prefix: str) -> float:
        """The value of the first Prometheus sample whose line starts with `line_prefix`, else 0."""
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(line_prefix):
                return float(line.split()[-1])
        return 0.0

    def nix_realise(self, *paths: str) -> subprocess.Popen:
        """Real Nix on this host: substitute into its store from its own peerix, trusting only its key."""
        return subprocess.Popen(
            ["nix-store", "--store", str(self.store), "--realise", *paths, "--option", "substituters", self.url,
             "--option", "trusted-public-keys", self.key.public.to_text(),
             "--option", "narinfo-cache-negative-ttl", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def realise(self, *paths: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        process = self.nix_realise(*paths)
        stdout, stderr = process.communicate(timeout=timeout)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise FleetError(f"nix-store --realise on {self.name} failed:\n{stderr.strip()}")
        return result


class LocalFleet:
    def __init__(self, root: Path, log_level: str = "info") -> None:
        if shutil.which("nix") is None:
            raise FleetError("nix is not installed")
        self.root = root
        self.log_level = log_level
        self.cluster = SecretKey.generate("peerix-fleet-1")
        self.cluster_file = root / "cluster.key"
        write_secret(self.cluster_file, self.cluster.to_text())
        self.hosts: dict[str, Host] = {}
        self.tracker_urls: list[str] = []  # what hosts started from now on are given (replicas: several)
        self.tracker_process: subprocess.Popen | None = None
        self._processes: list[subprocess.Popen] = []

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ,
                                       "PYTHONUNBUFFERED": "1"})
        self._processes.append(process)
        return process

    def terminate(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def tracker_url(self) -> str:
        return self.tracker_urls[0] if self.tracker_urls else ""

    def start_tracker(self, *extra: str, port: int | None = None) -> None:
        port = port or free_port()
        self.tracker_urls = [f"http://127.0.0.1:{port}"]
        self.tracker_process = self.spawn(
            [sys.executable, "-m", "tracker.cli", "--log-level", self.log_level, "serve",
             "--db", str(self.root / "tracker.sqlite"), "--listen", f"127.0.0.1:{port}", *extra],
            self.root / "tracker.log")
        wait_until(lambda: _healthy(self.tracker_url, self.tracker_process), "the tracker")

    def stop_tracker(self) -> None:
        self.terminate(self.tracker_process)

    def restart_tracker(self, *extra: str) -> None:
        """Stop the tracker and start it again with these settings, on the same database and port."""
        self.stop_tracker()
        self.start_tracker(*extra, port=int(self.tracker_url.rsplit(":", 1)[1]))

    def host(self, name: str) -> Host:
        self.hosts[name] = host = Host(self, name)
        return host

    def holders(self, path: str) -> str:
        """The tracker's answer for who holds `path` (JSON text)."""
        return httpx.get(f"{self.tracker_url}/api/v1/lookup/{Path(path).name[:32]}", timeout=5).text

    def wait_announced(self, host: Host, paths: list[str], timeout: float = 30) -> None:
        """Until the tracker lists the host's current process (its incarnation) for every path."""
        network = host.health()["network"]
        current = (network["peer_id"], network["incarnation"])

        def listed(path: str) -> bool:
            return current in {(p["peer_id"], p["addresses"].get("incarnation"))
                               for p in json.loads(self.holders(path))["peers"]}

        wait_until(lambda: all(map(listed, paths)), f"the tracker to list {host.name}'s paths", timeout)

    @property
    def tracker_log(self) -> str:
        return (self.root / "tracker.log").read_text(errors="replace")

    def close(self) -> None:
        for process in reversed(self._processes):
            self.terminate(process)


def closure_sizes(store: Path, *paths: str) -> dict[str, int]:
    """{path: NarSize} of the closure of `paths` in a store."""
    data = json.loads(run("nix", "path-info", "--json", "-r", "--store", str(store), *paths))
    entries = data if isinstance(data, list) else [{"path": p, **e} for p, e in data.items()]
    return {entry["path"]: entry["narSize"] for entry in entries}
