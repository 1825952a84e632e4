"""Separate network hosts on one machine: network namespaces wired to a bridge with veth pairs."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Host:
    def __init__(self, network: "Network", name: str) -> None:
        self.network = network
        self.ns = f"px{network.tag}{name}"
        self.addresses: list[str] = []
        self.interfaces: list[str] = []
        self.far_ends: list[tuple[Host, str]] = []  # the other end of each interface, where it is plugged in
        self.processes: list[subprocess.Popen] = []
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.ns}: {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start(self, args: list[str], log: Path) -> subprocess.Popen:
        """A background process in this namespace, its output appended to `log` (a restart's too)."""
        with open(log, "ab") as out:
            process = subprocess.Popen(self.command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.processes.append(process)
        return process

    def peerix(self, *args: str, log: Path) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "peerix.cli", *args], log)

    def shape(self, rate: str) -> None:
        """Limit this host's links to `rate` (e.g. "20mbit") both ways with tbf: this kernel has no netem,
        so no delay can be added."""
        for host, interface in [*((self, i) for i in self.interfaces), *self.far_ends]:
            host.run("tc", "qdisc", "add", "dev", interface, "root", "tbf", "rate", rate, "burst", "64kb",
                     "latency", "50ms")

    def get(self, url: str) -> str:
        return self.run("curl", "-sf", "--max-time", "5", url).stdout

    def terminate(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM to every process, then wait for each (SIGKILL after 10 s)."""
        self.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


class Network:
    """Hosts on a switch (a bridge in a namespace of its own), more switches, and point-to-point links."""

    def __init__(self, subnet: str = "10.231.0") -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = subnet
        self.hosts: list[Host] = []
        self.switches: list[Host] = []
        self.switch = self.add_switch("sw")

    def add_switch(self, name: str) -> Host:
        switch = Host(self, name)
        self.switches.append(switch)
        ip("-n", switch.ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", switch.ns, "link", "set", "br0", "up")
        return switch

    def add_host(self, name: str, on_switch: bool = True) -> Host:
        host = Host(self, name)
        self.hosts.append(host)
        if on_switch:
            self._veth(host, f"{self.subnet}.{len(self.hosts) + 1}", 24, self.switch, bridge=True)
        return host

    def plug(self, host: Host, switch: Host, address: str) -> None:
        """Another interface for `host`, on `switch` (a /24); it is the host's last interface."""
        self._veth(host, address, 24, switch, bridge=True)

    def link(self, a: Host, b: Host, subnet: str) -> None:
        """A cable between two hosts only: what reaches one of them this way never reaches the switch."""
        self._veth(a, f"{subnet}.1", 30, b, address_b=f"{subnet}.2")

    def _veth(self, host: Host, address: str, prefix: int, other: Host, bridge: bool = False,
              address_b: str | None = None) -> None:
        near, far = f"v{self.tag}{secrets.token_hex(2)}", f"v{self.tag}{secrets.token_hex(2)}"
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", near, "netns", host.ns)
        ip("link", "set", far, "netns", other.ns)
        ip("-n", host.ns, "addr", "add", f"{address}/{prefix}", "dev", near)
        host.interfaces.append(near)
        ip("-n", host.ns, "link", "set", near, "up")
        host.addresses.append(address)
        host.far_ends.append((other, far))
        if bridge:
            ip("-n", other.ns, "link", "set", far, "master", "br0")
        elif address_b:
            ip("-n", other.ns, "addr", "add", f"{address_b}/{prefix}", "dev", far)
            other.addresses.append(address_b)
        ip("-n", other.ns, "link", "set", far, "up")

    def close(self) -> None:
        for host in self.hosts:
            host.terminate()  # all at once: each takes a moment to stop
        for host in [*self.hosts, *self.switches]:
            host.stop()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)


def wait_for(check, timeout: float = 20, interval: float = 0.1):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(check, '__name__', check)}")
        time.sleep(interval)
