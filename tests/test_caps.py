"""Bandwidth caps: a shared token bucket per direction; the tracker advises, a local setting wins."""

import time
from pathlib import Path

import httpx
import pytest

from peerix.cli.localfleet import LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo

from conftest import requires_nix
from nixtools import HERE, build

pytestmark = requires_nix


@pytest.fixture(scope="module")
def path_200m() -> Path:
    return build(HERE / "nix" / "big200.nix")


def test_an_upload_cap_of_10_mib_s_holds_on_200_mib(tmp_path: Path, path_200m: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(path_200m))
        a.start("--max-upload-rate", "10M")
        c.start()
        fleet.wait_announced(a, [str(path_200m)])
        info = NarInfo.parse(httpx.get(f"{c.url}/{path_200m.name[:32]}.narinfo").text)
        started, received = time.monotonic(), 0
        with httpx.stream("GET", f"{c.url}/{info.url}", timeout=60) as response:
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
        rate = received / (1 << 20) / (time.monotonic() - started)
        print(f"\nupload cap 10 MiB/s: measured {rate:.2f} MiB/s over {received / (1 << 20):.0f} MiB "
              f"({(rate / 10 - 1) * 100:+.1f}%)")
        assert received == info.nar_size
        assert 7.5 < rate < 12.5  # the target is 15%; the bound is generous for a loaded machine
    finally:
        fleet.close()


def test_the_tracker_advises_rates_and_a_local_setting_wins(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker("--advised-upload-rate", "5M", "--advised-download-rate", "20M")
        follower, independent = fleet.host("follower"), fleet.host("independent")
        follower.start()
        independent.start("--max-upload-rate", "0")
        wait_until(lambda: follower.health()["network"]["max_upload_rate"] == 5 << 20, "the advice")
        assert follower.health()["network"]["max_download_rate"] == 20 << 20
        wait_until(lambda: independent.health()["network"]["max_download_rate"] == 20 << 20, "the advice")
        assert independent.health()["network"]["max_upload_rate"] is None  # its own 0: unlimited
    finally:
        fleet.close()


def test_advice_withdrawn_by_the_tracker_lifts_the_advised_caps(tmp_path: Path, closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker("--advised-upload-rate", "5M", "--advised-download-rate", "20M")
        follower, independent = fleet.host("follower"), fleet.host("independent")
        follower.start()
        independent.start("--max-upload-rate", "3M")
        wait_until(lambda: follower.health()["network"]["max_upload_rate"] == 5 << 20, "the advice")
        wait_until(lambda: independent.health()["network"]["max_download_rate"] == 20 << 20, "the advice")

        fleet.restart_tracker()  # no advice any more
        for host in (follower, independent):
            host.give(str(closure))  # a change of the store: an announce at once, not after the 60 s heartbeat
            fleet.wait_announced(host, [str(closure)])
        wait_until(lambda: follower.health()["network"]["max_upload_rate"] is None, "the advice to go")
        wait_until(lambda: independent.health()["network"]["max_download_rate"] is None, "the advice to go")
        assert follower.health()["network"]["max_download_rate"] is None
        assert independent.health()["network"]["max_upload_rate"] == 3 << 20  # its own setting stays
        assert "tracker advice withdrawn max_upload_rate" in follower.log
    finally:
        fleet.close()
