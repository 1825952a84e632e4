"""A fleet under fire for most of a minute (tests/soak.py): seven hosts in namespaces, real Nix on three of
them for 10 s of warm-up and 36 s of faults: a daemon killed and restarted every six seconds or so, the
tracker restarted and stopped for 12 s, a liar, a mute peer and a host behind a 5 MiB/s link.
bench/soak.py runs the same on twelve hosts for ten minutes after one of warm-up."""

from pathlib import Path

import pytest
from netns import why_no_netns

from conftest import requires_nix
from soak import Settings, Soak, build

pytestmark = [requires_nix, pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")]


def test_a_fleet_under_fire_meets_the_soak_targets(tmp_path: Path) -> None:
    settings = Settings(hosts=7, seconds=36, warm_up=10, closures=6, kill_every=6, freeze=12)
    soak = Soak(tmp_path, build(settings.closures, "soak-test-1"), settings)
    try:
        report = soak.run()
    finally:
        soak.close()
    figures = "\n".join(report.lines())
    print(figures)  # shown with -s, and on failure
    assert not report.missed(), figures
    assert sum(op.ok for op in report.ops) >= 10 and sum(op.bytes for op in report.ops) > 0, figures
    assert report.faults["daemon kills"] >= 3 and report.faults["tracker restarts"] == 1, figures
    assert report.frozen[1] - report.frozen[0] >= settings.freeze, figures
