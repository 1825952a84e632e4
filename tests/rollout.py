"""A fleet rolling out one closure at the same moment: hosts in network namespaces on one switch, a
tracker, and an upstream cache (nginx) behind a rate-limited link. Shared by tests/test_pull_through.py
and bench/rollout.py.

Each host runs a peerix daemon (tracker only, no LAN discovery) whose `upstream` is the stand-in;
its Nix substitutes the closure into a client store of its own, through its daemon or, for comparison,
straight from the upstream as plain Nix would.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from netns import Host, Network, wait_for

from peerix.common.secrets import write_secret
from peerix.nix.signing import SecretKey

from nixtools import nix, run
from upstream import UpstreamCache

TRACKER_PORT = 12305
DAEMON = "http://127.0.0.1:12304"


class Rollout:
    def __init__(self, root: Path, closure: Path, hosts: int = 8, rate: str = "160mbit",
                 compression: str = "zstd") -> None:
        self.root = root
        self.closure = closure
        self.net = Network(subnet="10.233.0")
        try:
            self.tracker_host = self.net.add_host("tr")
            self.upstream_host = self.net.add_host("up")
            self.hosts = {f"h{index}": self.net.add_host(f"h{index}") for index in range(hosts)}
            self.upstream_host.shape(rate)
            self.upstream = UpstreamCache(root / "upstream", str(closure), compression=compression,
                                          address=self.upstream_host.addresses[0], command=self.upstream_host.command())
            tracker_ip = self.tracker_host.addresses[0]
            self.tracker_url = f"http://{tracker_ip}:{TRACKER_PORT}"
            self.tracker_host.start([sys.executable, "-m", "tracker.cli", "serve", "--db", str(root / "tracker.db"),
                                     "--listen", f"{tracker_ip}:{TRACKER_PORT}"], root / "tracker.log")
            self.keys = {name: SecretKey.generate(f"{name}-1") for name in self.hosts}
            first = next(iter(self.hosts.values()))
            for url in (f"{self.upstream.url}/nix-cache-info", f"{self.tracker_url}/health"):
                wait_for(lambda: first.run("curl", "-sf", url, check=False).returncode == 0)
        except BaseException:
            self.net.close()
            raise

    def home(self, name: str) -> Path:
        return self.root / name

    def start(self, name: str, *extra: str) -> None:
        host, home = self.hosts[name], self.home(name)
        home.mkdir(exist_ok=True)
        if not (home / "host.sec").exists():
            write_secret(home / "host.sec", self.keys[name].to_text())
            run("nix-store", "--store", str(home / "store"), "--init")
        host.peerix("serve", "--store-root", str(home / "store"), "--state-dir", str(home / "state"),
                    "--sign-key-file", str(home / "host.sec"), "--name", name, "--tracker", self.tracker_url,
                    "--no-lan", "--upstream", self.upstream.url, "--trusted-public-keys", self.upstream.public_key,
                    "--no-relays", "--no-discovery", "--iroh-listen", "0.0.0.0:12305", *extra,
                    log=home / "peerix.log")

    def start_all(self, *extra: str) -> None:
        for name in self.hosts:
            self.start(name, *extra)
        for host in self.hosts.values():
            wait_for(lambda: host.run("curl", "-sf", f"{DAEMON}/health", check=False).returncode == 0)
        # Every host announced (the tracker grants leases only to peers others can reach).
        wait_for(lambda: len(json.loads(next(iter(self.hosts.values())).get(
            f"{self.tracker_url}/api/v1/peers"))["peers"]) == len(self.hosts), timeout=30)

    def copy(self, name: str, substituters: tuple[str, ...] = (DAEMON,)) -> subprocess.Popen:
        """Real Nix on a host substituting the closure into a fresh client store from `substituters`
        (its daemon, the upstream, or both in this order as a fleet would configure them)."""
        home = self.home(name)
        keys = f"{self.keys[name].public.to_text()} {self.upstream.public_key}"
        client = home / f"client-{time.monotonic_ns()}"
        return subprocess.Popen(self.hosts[name].command(
            "env", f"XDG_CACHE_HOME={home / 'xdg'}", "nix-store", "--store", str(client),
            "--realise", str(self.closure), "--option", "substituters", " ".join(substituters),
            "--option", "trusted-public-keys", keys, "--option", "narinfo-cache-negative-ttl", "0"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def copy_all(self, substituters: tuple[str, ...] = (DAEMON,), timeout: float = 600) -> dict[str, float]:
        """Every host at the same moment; {host: seconds until its copy was done}."""
        started = time.monotonic()
        copies = {name: self.copy(name, substituters) for name in self.hosts}
        done = {}
        pending = dict(copies)
        while pending:
            for name, copy in list(pending.items()):
                if copy.poll() is None:
                    continue
                done[name] = time.monotonic() - started
                del pending[name]
                if copy.returncode != 0:
                    raise AssertionError(f"{name}: nix-store --realise failed:\n{copy.stderr.read()}")
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"still copying after {timeout} s: {sorted(pending)}")
            time.sleep(0.02)
        return done

    def verify(self, name: str) -> None:
        for client in self.home(name).glob("client-*"):
            nix("store", "verify", "--store", str(client), "-r", str(self.closure), "--sigs-needed", "1",
                "--trusted-public-keys", f"{self.keys[name].public.to_text()} {self.upstream.public_key}")

    def log(self, name: str) -> str:
        return (self.home(name) / "peerix.log").read_text(errors="replace")

    def metric(self, name: str, prefix: str) -> float:
        for line in self.hosts[name].get(f"{DAEMON}/metrics").splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def kill(self, name: str) -> None:
        host: Host = self.hosts[name]
        for process in host.processes:
            process.kill()
            process.wait()
        host.processes.clear()

    def close(self) -> None:
        self.upstream.stop()
        self.net.close()
