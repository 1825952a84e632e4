"""The dashboard as a person sees it: loaded by headless Chromium from a tracker with real peers."""

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
from browser import CHROMIUM, Page, rendered_dom

from peerix.net.tracker_protocol import PEERS_PATH

from trackertools import announce, error_of, new_key, random_hashes, signed


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/dev test installs it)")
def test_the_dashboard_shows_the_fleet(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker("--offline-after", "1h", "--remove-after", "1d")
    away, builder, laptop = new_key(), new_key(), new_key()
    announce(tracker, away, name="away-box", hashes=random_hashes(40))
    # Offline by leaving, not by a short offline_after: Chromium's first start can take seconds.
    away_id = bytes(away.verify_key).hex()
    assert signed(tracker, away, "DELETE", f"{PEERS_PATH}/{away_id}").status_code == 200
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
    assert "membership open" in footer and "offline after 1 h, removed after 1 d" in footer


def test_the_dashboard_forbids_scripts_and_can_be_turned_off(start_tracker) -> None:
    tracker = start_tracker()
    response = tracker.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "No peer has announced yet." in response.text
    assert start_tracker("--no-dashboard").get("/").status_code == 404


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback: connecting to it, a client is not on loopback either."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # sends nothing; the kernel picks the source address of the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_closed_fleet_shows_its_dashboard_only_on_the_trackers_host(start_tracker, tmp_path: Path) -> None:
    """Under allowlist or token membership the dashboard, which names every peer with its addresses, is for
    the tracker's own host: loopback clients, as seen through trusted proxies."""
    member = new_key()
    tracker = start_tracker("--allow", bytes(member.verify_key).hex(), host="0.0.0.0")
    announce(tracker, member, name="secret-builder", hashes=random_hashes(3))

    def refused(response: httpx.Response) -> None:
        assert response.status_code == 403 and error_of(response) == "dashboard_private", response.text
        assert "secret-builder" not in response.text and "loopback" in response.json()["error"]["message"]

    local = tracker.get("/")
    assert local.status_code == 200 and "secret-builder" in local.text
    # A proxy on the tracker's host that the tracker does not trust, forwarding a stranger:
    for header, value in (("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "127.0.0.1, 203.0.113.9"),
                          ("x-real-ip", "203.0.113.9"), ("forwarded", 'for="[2001:db8::9]:4711";proto=https')):
        refused(tracker.get("/", headers={header: value}))
    assert tracker.get("/", headers={"forwarded": "for=127.0.0.1", "x-forwarded-for": "::1"}).status_code == 200
    refusals = 4
    if (address := non_loopback_address()) is not None:  # a client on another address, as a stranger is
        refused(httpx.get(f"http://{address}:{tracker.port}/", timeout=10))
        refusals += 1
        assert httpx.get(f"http://{address}:{tracker.port}/health", timeout=10).status_code == 200  # counts only
        open_tracker = start_tracker(host="0.0.0.0")
        assert httpx.get(f"http://{address}:{open_tracker.port}/", timeout=10).status_code == 200
    assert tracker.metric('peerix_tracker_refusals_total{code="dashboard_private"}') == refusals
    assert "refused status=403 code=dashboard_private method=GET path=/ client=127.0.0.1" in tracker.log

    # Behind a trusted proxy, the client it names decides.
    tokens = tmp_path / "tokens"
    tokens.write_text("fleet-token-0123456789\n")
    tokens.chmod(0o600)
    proxied = start_tracker("--token-file", str(tokens), "--trusted-proxy", "127.0.0.1")
    assert proxied.get("/", headers={"x-forwarded-for": "127.0.0.1"}).status_code == 200
    refused(proxied.get("/", headers={"x-forwarded-for": "203.0.113.9"}))
    assert "code=dashboard_private method=GET path=/ client=203.0.113.9" in proxied.log
    assert start_tracker("--token-file", str(tokens), "--no-dashboard").get("/").status_code == 404
