"""The README's main job, run as a person would."""

import re

from conftest import peerix, requires_nix


@requires_nix
def test_demo_moves_paths_from_two_hosts_to_a_third() -> None:
    result = peerix("demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    moved = [line.split() for line in out.splitlines() if "-demo-" in line and line.strip()[:1].isalnum()]
    assert {row[1] for row in moved if len(row) == 4} == {"host-a", "host-b"}
    assert "3 of 3 hosts deregistered" in out and out.rstrip().endswith("demo finished")
    # the editor, run on host C, names its inputs in full: no line is cut short
    assert re.search(r"^ +/nix/store/[0-9a-z]{32}-demo-editor-data-2\.1$", out, re.M), out
