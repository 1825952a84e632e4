"""A fleet rolling out one closure at the same moment: hosts in network namespaces on one switch, a
tracker, and an upstream cache (nginx) behind a rate-limited link. Shared by tests/test_pull_through.py
and bench/rollout.py.

Each host runs a peerix daemon (tracker only, no LAN discovery) whose `upstream` is the stand-in;
its Nix substitutes the closure into a client store of its own, through its daemon or, for comparison,
straight from the upstream as plain Nix would.
"""

import json
import subprocess
import time
from pathlib import Path

from netns import wait_for

from nixtools import nix
from nsfleet import DAEMON, NsFleet
from upstream import UpstreamCache


class Rollout(NsFleet):
    def __init__(self, root: Path, closure: Path, hosts: int = 8, rate: str = "160mbit",
                 compression: str = "zstd") -> None:
        super().__init__(root, subnet="10.233.0")
        self.closure = closure
        try:
            self.upstream_host = self.net.add_host("up")
            for index in range(hosts):
                self.add_host(f"h{index}")
            self.upstream_host.shape(rate)
            self.upstream = UpstreamCache(root / "upstream", str(closure), compression=compression,
                                          address=self.upstream_host.addresses[0], command=self.upstream_host.command())
            self.start_tracker()
            first = next(iter(self.hosts.values()))
            wait_for(lambda: first.run("curl", "-sf", f"{self.upstream.url}/nix-cache-info", check=False)
                     .returncode == 0)
        except BaseException:
            super().close()
            raise

    def start(self, name: str, *extra: str) -> None:
        super().start(name, "--no-lan", "--upstream", self.upstream.url, "--trusted-public-keys",
                      self.upstream.public_key, *extra)

    def start_all(self, *extra: str) -> None:
        for name in self.hosts:
            self.start(name, *extra)
        for name in self.hosts:
            self.wait_healthy(name)
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

    def close(self) -> None:
        self.upstream.stop()
        super().close()
