"""The host's dashboard as a person sees it in Chromium, after a real transfer; its totals survive restarts."""

from pathlib import Path

import pytest
from browser import CHROMIUM, Page, rendered_dom

from peerix.cli.localfleet import LocalFleet

from conftest import requires_nix
from nixtools import closure_of

pytestmark = [requires_nix, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                                                       "(scripts/dev test installs it)")]


def test_dashboard_shows_a_real_transfer_and_keeps_its_totals(tmp_path: Path, closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(closure))
        a.start()
        c.start()
        fleet.wait_announced(a, [str(closure)])
        c.realise(str(closure))

        page = Page(rendered_dom(c.url + "/dashboard", tmp_path / "chromium"))
        transfers = [row for row in page.rows if len(row) == 8 and row[1] == "from peer"]
        fetched = {row[2].split("-", 1)[1] for row in transfers if row[6] == "complete"}
        assert fetched == {Path(p).name.split("-", 1)[1] for p in closure_of(closure)}
        assert all(row[3] == a.peer_id[:10] for row in transfers)
        assert [row for row in page.rows if row[:2] == ["a", "tracker"]], page.rows
        amount, unit = page.text_by_id["fetched-from-peers"].split()
        assert float(amount) > 0 and unit == "MiB"  # the closure is about 3 MiB
        assert page.text_by_id["verification-failures"].split() == ["0"]
        assert not [url for url in page.urls if url.startswith(("http", "//"))]  # no external assets
        before = page.text_by_id["fetched-from-peers"].split()

        c.stop()  # SIGTERM: the totals are written on the way out
        c.start()
        again = Page(rendered_dom(c.url + "/dashboard", tmp_path / "chromium"))
        assert again.text_by_id["fetched-from-peers"].split() == before
        assert len([row for row in again.rows if len(row) == 8 and row[1] == "from peer"]) == len(transfers)
    finally:
        fleet.close()
