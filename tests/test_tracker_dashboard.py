"""The dashboard as a person sees it: loaded by headless Chromium from a tracker with real peers."""

import time
from pathlib import Path

import pytest
from browser import CHROMIUM, Page, rendered_dom

from trackertools import announce, new_key, random_hashes


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/dev test installs it)")
def test_the_dashboard_shows_the_fleet(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker("--offline-after", "1s", "--remove-after", "1h")
    away, builder, laptop = new_key(), new_key(), new_key()
    announce(tracker, away, name="away-box", hashes=random_hashes(40))
    time.sleep(1.2)
    shared = random_hashes(1000)
    announce(tracker, builder, name="builder-1", hashes=shared + random_hashes(234))
    announce(tracker, laptop, name="<script>alert('pwned')</script>", hashes=shared[:12])
    tracker.get(f"/api/v1/lookup/{shared[0]}")

    page = Page(rendered_dom(tracker.url + "/", tmp_path / "chromium"))

    assert page.value("peers-online") == "2" and page.value("peers-offline") == "1"
    assert page.value("paths") == "1,274" and page.value("holdings") == "1,286"
    assert float(page.value("lookup-rate")) > 0 and float(page.value("announce-rate")) > 0
    header, *rows = page.rows
    assert header == ["Status", "Name", "Peer id", "Addresses", "Paths", "Last seen"]
    by_name = {row[1]: row for row in rows}
    assert list(by_name) == ["<script>alert('pwned')</script>", "builder-1", "away-box"]  # online first, newest first
    status, _, peer_id, addresses, paths, last_seen = by_name["builder-1"]
    assert status == "online" and paths == "1,234" and last_seen.endswith("s ago")
    assert peer_id.startswith(bytes(builder.verify_key).hex()[:16])
    assert addresses == "127.0.0.1:4433"
    assert by_name["away-box"][0] == "offline" and by_name["away-box"][4] == "40"
    # The peer's chosen name is shown as text, never run: no script element, no external asset.
    assert "script" not in page.tags and page.urls == []
    footer = " ".join(page.text_by_id["footer"].split())
    assert "membership open" in footer and "offline after 1 s, removed after 1 h" in footer


def test_the_dashboard_forbids_scripts_and_can_be_turned_off(start_tracker) -> None:
    tracker = start_tracker()
    response = tracker.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "No peer has announced yet." in response.text
    assert start_tracker("--no-dashboard").get("/").status_code == 404
