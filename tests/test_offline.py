"""The demo, the tests and the benchmarks stay on this machine and leave its configuration alone.

Each run here happens on a test host whose default route leads to another test namespace (a dead
end standing in for the world): a packet that would leave a real machine shows up in the trace,
and goes nowhere.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, dump_dom
from netns import Host, Network, ip, why_no_netns
from traffic import off_loopback, sent_to, strace

from conftest import ROOT
from nixtools import why_no_nix

pytestmark = [
    pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or ""),
    pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace"),
]


@pytest.fixture
def routed() -> Iterator[Host]:
    """A host with a default route (to a dead-end namespace), as a machine on a network has."""
    network = Network("10.233.0")
    host, world = network.add_host("h", on_switch=False), network.add_host("world", on_switch=False)
    network.link(host, world, "10.233.9")
    ip("-n", host.ns, "route", "add", "default", "via", "10.233.9.2")
    yield host
    network.close()


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A virtual environment for scripts/dev that is this one and is installed: setup has nothing to do."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for command, module in (("python", ""), ("peerix", "-m peerix.cli ")):
        (venv / "bin" / command).write_text(f'#!/bin/sh\nexec {sys.executable} {module}"$@"\n')
        (venv / "bin" / command).chmod(0o755)
    (venv / ".peerix-installed").touch()
    return venv


def dev(host: Host, *args: str, venv: Path, trace: Path | None = None, wrap: tuple[str, ...] = ()
        ) -> subprocess.CompletedProcess:
    """scripts/dev on `host` (traced into `trace`), with its own Nix configuration: NIX_CONF_DIR is its to set."""
    command = [*wrap, str(ROOT / "scripts/dev"), *args]
    env = {name: value for name, value in os.environ.items() if name != "NIX_CONF_DIR"} | {"PEERIX_VENV": str(venv)}
    return subprocess.run(host.command(*(strace(*command, output=trace) if trace else command)), env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.skipif(why_no_nix() is not None, reason=why_no_nix() or "")
def test_the_demo_sends_nothing_off_this_machine(routed: Host, venv: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    result = dev(routed, "demo", venv=venv, trace=trace)
    assert result.returncode == 0 and "demo finished" in result.stdout, result.stdout + result.stderr
    destinations = sent_to(trace)
    assert len(destinations) >= 5  # tracker, daemons, Nix: the trace sees the demo's traffic...
    assert off_loopback(destinations) == set()  # ...and all of it stays on loopback


def test_the_tests_run_where_only_loopback_is(routed: Host, venv: Path, tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text("import socket\n\n\ndef test_only_loopback() -> None:\n"
                     "    assert [name for _, name in socket.if_nameindex()] == ['lo']\n")
    result = dev(routed, "test", "-q", "-p", "no:cacheprovider", str(probe), venv=venv)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")
def test_chromium_resolves_no_host_name(routed: Host, tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site/index.html").write_text('<html><body><p id="page">served here</p></body></html>')
    routed.start([sys.executable, "-m", "http.server", "18080", "--bind", "127.0.0.1", "--directory",
                  str(tmp_path / "site")], tmp_path / "http.log")
    trace = tmp_path / "trace"
    for _ in range(50):  # the server's start
        result = routed.run(*strace(*dump_dom("http://127.0.0.1:18080/", tmp_path / "profile"), output=trace),
                            check=False)
        if "served here" in result.stdout:
            break
    assert "served here" in result.stdout, result.stderr
    assert off_loopback(sent_to(trace)) == set()  # no DNS query: Chromium asked the resolver nothing


@pytest.mark.skipif(why_no_nix() is not None, reason=why_no_nix() or "")
def test_dev_leaves_the_system_nix_configuration_alone(routed: Host, venv: Path, tmp_path: Path) -> None:
    """On a machine without /etc/nix/nix.conf (an empty /etc/nix in a mount namespace of this test, or
    none at all, as Debian's nix-bin leaves it), scripts/dev writes none, and its tests still build and
    substitute with Nix."""
    script = tmp_path / "masked.sh"
    script.write_text('if [ -d /etc/nix ]; then mount -t tmpfs -o mode=0755 tmpfs /etc/nix || exit 1; fi\n'
                      '"$@"; status=$?\necho "etc-nix: $(ls -A /etc/nix 2>/dev/null)"; exit $status\n')
    result = dev(routed, "test", "-q", "-p", "no:cacheprovider", "tests/test_serve.py", "-k", "nix_copy_from_peerix",
                 venv=venv, wrap=("unshare", "--mount", "--propagation", "private", "sh", str(script)))
    assert result.stdout.rstrip().endswith("etc-nix:"), result.stdout  # nothing written there
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
