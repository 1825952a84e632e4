"""systemd integration against a fake NOTIFY_SOCKET: readiness, watchdog pings, a clean stop."""

import socket
import time
from pathlib import Path

from conftest import offline, requires_nix

pytestmark = requires_nix


def test_ready_watchdog_and_stopping(start_daemon, host_a: Path, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        daemon = start_daemon("serve", "--store-root", str(host_a), *offline(tmp_path / "state"),
                              env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        received: list[str] = []
        deadline = time.monotonic() + 5
        while received.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            received += sock.recv(4096).decode().splitlines()
        assert received[0] == "READY=1" and received[1].startswith("STATUS=serving, peer ")
        assert received.count("WATCHDOG=1") >= 3  # every 0.1 s: half of WATCHDOG_USEC
        assert daemon.stop() == 0
        tail = []
        while "STOPPING=1" not in tail:
            tail += sock.recv(4096).decode().splitlines()
