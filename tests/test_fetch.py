"""`peerix fetch`: a closure arrives through the daemon; progress on a terminal, one line when piped."""

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from peerix.cli.localfleet import LocalFleet

from conftest import ROOT, requires_nix
from nixtools import closure_of, path_info, run

pytestmark = requires_nix


def test_fetch_shows_progress_on_a_terminal_and_stays_quiet_when_piped(tmp_path: Path, big_path: Path,
                                                                       closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(big_path), str(closure))
        a.start()
        c.start("--max-download-rate", "16M")  # 64 MiB in about 4 s: long enough to watch
        fleet.wait_announced(a, [str(big_path), str(closure)])
        command = [sys.executable, "-m", "peerix.cli", "fetch", "--url", c.url, "--store", str(c.store)]

        piped = subprocess.run([*command, str(closure)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert piped.returncode == 0, piped.stderr
        assert piped.stderr.count("\n") == 1 and piped.stderr.startswith("fetched 3 paths: ")
        assert "ETA" not in piped.stderr and "\r" not in piped.stderr
        assert sorted(path_info(closure, store=str(c.store), recursive=True)) == closure_of(closure)

        leader, follower = pty.openpty()
        process = subprocess.Popen([*command, str(big_path)], stdin=subprocess.DEVNULL, stdout=follower,
                                   stderr=follower, cwd=ROOT)
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            screen += chunk
        assert process.wait(60) == 0, screen
        text = screen.decode(errors="replace")
        frames = re.findall(r"fetching 1 paths?: +\d+% ([\d.]+) MiB of 64\.0 MiB, ([\d.]+) MiB/s, ETA (\d+)s", text)
        moving = [(float(done), float(rate), int(eta)) for done, rate, eta in frames if 0 < float(done) < 64]
        assert len({done for done, _, _ in moving}) >= 3, text  # the line moves with the bytes...
        assert [done for done, _, _ in moving] == sorted(done for done, _, _ in moving)
        for done, rate, eta in moving:  # ...at about the capped rate, with an ETA that follows from it
            assert 1 < rate < 32 and abs(eta - (64 - done) / rate) <= 1, (done, rate, eta)
        assert "fetched 1 path: 64.0 MiB" in text
        run("nix-store", "--store", str(c.store), "--check-validity", str(big_path))

        again = subprocess.run([*command, str(big_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert again.returncode == 0 and again.stderr.startswith("fetched 0 paths")
    finally:
        fleet.close()
