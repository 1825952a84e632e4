"""`peerix demo`: show a host's store served by peerix and substituted by real Nix on another host.

Hosts are chroot stores under a temporary directory, so the demo needs Nix but touches no
configuration; it builds a fresh closure in the root store and copies it to host A.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .nix.signing import SecretKey
from .secrets import write_secret

DEMO_NIX = Path(__file__).with_name("demo.nix")


class DemoError(Exception):
    pass


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"{' '.join(args[:3])} ... failed:\n{result.stderr.strip()}")
    return result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"peerix exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise DemoError("peerix did not become healthy")


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo(keep: bool = False) -> None:
    if shutil.which("nix") is None:
        raise DemoError("nix is not installed: scripts/dev demo installs Debian's nix-bin")
    work = Path(tempfile.mkdtemp(prefix="peerix-demo-"))
    server: subprocess.Popen | None = None
    try:
        host_a, host_b = work / "hostA", work / "hostB"
        _step("building a small closure and giving it to host A")
        top = _run("nix-build", str(DEMO_NIX), "--no-out-link", "--argstr", "seed", str(time.time_ns())).strip()
        _run("nix", "copy", "--no-check-sigs", "--to", str(host_a), top)
        info = json.loads(_run("nix", "path-info", "--json", "-r", "--store", str(host_a), top))
        paths = {entry["path"]: entry["narSize"] for entry in info} if isinstance(info, list) else \
            {path: entry["narSize"] for path, entry in info.items()}
        for path, size in sorted(paths.items()):
            print(f"    {path}  {size / 1e6:.1f} MB")

        _step("host A: peerix serve, signing with its own key")
        key = SecretKey.generate("demo-host-a-1")
        write_secret(work / "hostA.sec", key.to_text())
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "peerix.cli", "--log-level", "warning", "serve", "--store-root", str(host_a),
             "--listen", f"127.0.0.1:{port}", "--sign-key-file", str(work / "hostA.sec"),
             "--state-dir", str(work / "hostA-state"), "--iroh-listen", "127.0.0.1:0", "--no-relays",
             "--no-discovery", "--no-lan", "--upstream", "none"],
        )
        _wait_healthy(url, server)
        print(f"    {url}  trusted key {key.public.to_text()}")

        _step("host B: nix copy --from host A's peerix, signatures required")
        started = time.monotonic()
        _run("nix", "copy", "--from", url, "--to", str(host_b),
             "--option", "trusted-public-keys", key.public.to_text(), top)
        seconds = time.monotonic() - started
        total = sum(paths.values())
        _run("nix", "store", "verify", "--store", str(host_b), "-r", top,
             "--trusted-public-keys", key.public.to_text(), "--sigs-needed", "1")
        print(f"    {len(paths)} paths, {total / 1e6:.1f} MB moved A -> B in {seconds:.2f} s "
              f"({total / 1e6 / seconds:.0f} MB/s), verified and signed by {key.name}")
        print(f"    host B runs: {_run(str(host_b) + top + '/bin/demo-app').strip()[:100]}...")

        metrics = httpx.get(url + "/metrics").text
        served = [line for line in metrics.splitlines() if line.startswith(("peerix_narinfo_lookups_total",
                                                                             "peerix_nar_transfers_total"))]
        _step("host A's metrics")
        for line in served:
            print(f"    {line}")
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        if keep:
            print(f"\nkept {work}")
        else:
            _run("chmod", "-R", "u+w", str(work))
            shutil.rmtree(work, ignore_errors=True)
    print("\ndemo finished")
