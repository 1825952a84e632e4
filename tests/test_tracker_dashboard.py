"""The dashboard as a person sees it: loaded by headless Chromium from a tracker with real peers."""

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
from browser import HEIGHT, WIDTH, accessibility_problems, png_size

from peerix.net.tracker_protocol import PEERS_PATH

from trackertools import announce, announcement, error_of, new_key, random_hashes, signed


@pytest.mark.parametrize("backend", ["sqlite"])  # one browser session is enough: the JSON below runs on both
def test_the_dashboard_shows_the_fleet(start_tracker, browser) -> None:
    tracker = start_tracker("--offline-after", "1h", "--remove-after", "1d")
    away, builder, laptop = new_key(), new_key(), new_key()
    for number in range(110):  # a fleet larger than a page
        announce(tracker, new_key(), name=f"node-{number:03}", hashes=random_hashes(1))
    announce(tracker, away, name="away-box", hashes=random_hashes(40))
    away_id = bytes(away.verify_key).hex()
    assert signed(tracker, away, "DELETE", f"{PEERS_PATH}/{away_id}").status_code == 200  # offline by leaving
    shared = random_hashes(1000)
    builder_id = bytes(builder.verify_key).hex()
    signed(tracker, builder, "POST", "/api/v1/announce", {
        **announcement("builder-1", hashes=shared + random_hashes(234)),
        "addresses": {"direct": ["192.0.2.7:12305", "[2001:db8::7]:12305"], "relay_url": None,
                      "http_url": "http://builder-1.example:12304"}}).raise_for_status()
    hostile = "<script>alert('pwned')</script>"
    announce(tracker, laptop, name=hostile, hashes=shared[:12])
    tracker.get(f"/api/v1/lookup/{shared[0]}")

    browser.open(tracker.url + "/", "document.getElementById('live-state').innerText.startsWith('live')")
    page = browser.page()
    assert page.value("peers-online") == "112" and page.value("peers-offline") == "1"
    assert page.value("paths") == "1,384" and page.value("holdings") == "1,396"
    assert all(float(page.value(rate).replace(",", "")) > 0 for rate in ("lookup-rate", "announce-rate"))  # "1,332.8"
    rows = browser.rows("peers")
    assert len(rows) == 100 and "1–100 of 113 (page 1 of 2)" in browser.text("main")
    by_name = {row[1]: row for row in rows}
    status, _, peer_id, addresses, paths, last_seen = by_name["builder-1"]
    assert status == "online" and paths == "1,234" and last_seen.endswith("s ago")
    assert peer_id.startswith(builder_id[:16])
    assert addresses.split("\n") == ["192.0.2.7:12305", "[2001:db8::7]:12305", "http http://builder-1.example:12304"]
    assert [row[1] for row in rows[:3]] == [hostile, "builder-1", "node-109"]  # online first, newest first
    assert browser.evaluate("[...document.scripts].map(s => s.src)") == [tracker.url + "/static/dashboard.js"]
    assert [url for url in page.urls if not url.startswith(("/", "?"))] == []  # nothing from elsewhere
    # Readable: addresses in the body's size, not 12px.
    assert browser.evaluate("parseFloat(getComputedStyle(document.querySelector('td.addresses')).fontSize)") >= 14
    # The chart of peers online has its point, drawn by the script from /api/v1/stats.
    label = browser.evaluate("document.querySelector('figure[data-series=\"history.peers_online\"] svg')"
                             ".getAttribute('aria-label')")
    assert label == "Peers online, last hour: now 112, peak 112"
    assert browser.evaluate("document.querySelectorAll('figure.chart path[d^=M]').length") == 6  # 3 charts, drawn
    footer = " ".join(browser.text("footer").split())
    assert "membership open" in footer and "offline after 1 h, removed after 1 d" in footer
    assert accessibility_problems(browser) == []
    assert png_size(browser.screenshot("tracker-dashboard")) == (WIDTH, HEIGHT)
    browser.dark(True)
    try:
        assert browser.contrast("td") >= 7 and browser.contrast(".label") >= 4.5
        assert browser.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(20, 23, 28)"
        browser.screenshot("tracker-dashboard-dark")
    finally:
        browser.dark(False)

    browser.evaluate("document.querySelector('a[rel=next]').click()")
    # the new page, whole: its URL changes before its document is there
    browser.wait_for("location.search === '?page=2' && document.readyState === 'complete' "
                     "&& document.querySelectorAll('#peers > tbody > tr').length > 0")
    later = browser.rows("peers")
    assert len(later) == 13 and later[-1][1] == "away-box" and later[-1][0] == "offline"

    # The search box: a store path in, its online holders out.
    browser.evaluate(f"document.getElementById('q').value = '/nix/store/{shared[5]}-hello-2.12'")
    browser.evaluate("document.querySelector('form.search button').click()")
    browser.wait_for("location.pathname === '/search' && document.readyState === 'complete' "
                     "&& document.getElementById('holders') !== null")
    assert sorted(row[1] for row in browser.rows("holders")) == sorted([hostile, "builder-1"])
    assert "2 online peers hold" in browser.text("#holders")
    browser.screenshot("tracker-search")
    browser.open(f"{tracker.url}/search?q=not-a-path")
    assert "Not a store path or hash" in browser.text("#result")

    browser.open(f"{tracker.url}/search?q={shared[5]}")
    browser.evaluate("[...document.querySelectorAll('#holders a')].find(a => a.innerText === 'builder-1').click()")
    browser.wait_for(f"location.pathname === '/peers/{builder_id}' && document.readyState === 'complete' "
                     "&& document.getElementById('peer') !== null")
    details = browser.text("#peer")
    assert builder_id in details and "1,234" in details and "[2001:db8::7]:12305" in details
    assert "http://builder-1.example:12304" in details
    browser.screenshot("tracker-peer")


def test_one_peer_and_the_stats_as_json(start_tracker) -> None:
    """What the dashboard shows is in the API too: one peer's listing, and the counts with the last hour."""
    tracker = start_tracker()
    key = new_key()
    announce(tracker, key, name="solo", hashes=random_hashes(3))
    peer_id = bytes(key.verify_key).hex()
    record = tracker.get(f"{PEERS_PATH}/{peer_id}").json()
    assert (record["peer_id"], record["name"], record["paths"], record["online"]) == (peer_id, "solo", 3, True)
    assert record == next(p for p in tracker.get(PEERS_PATH).json()["peers"] if p["peer_id"] == peer_id)
    assert error_of(tracker.get(f"{PEERS_PATH}/{'0' * 64}")) == "not_found"
    assert error_of(tracker.get(f"{PEERS_PATH}/nope")) == "invalid_peer_id"
    tracker.get(f"/api/v1/lookup/{random_hashes(1)[0]}")
    stats = tracker.get("/api/v1/stats").json()
    assert stats["counts"] == {"peers_online": 1, "peers_offline": 0, "paths": 3, "holdings": 3}
    history = stats["history"]
    assert history["announces"]["step"] == 60 and len(history["announces"]["values"]) == 60
    # this minute's slot, or the last one's when the minute turned in between
    assert [sum(v or 0 for v in history[name]["values"][-2:]) for name in ("announces", "lookups")] == [1, 1]
    assert history["peers_online"]["values"][-1] == 1 and history["peers_online"]["values"][0] is None
    assert stats["per_minute"]["lookups"] > 0


def test_the_dashboard_allows_only_its_own_script_and_can_be_turned_off(start_tracker) -> None:
    tracker = start_tracker()
    response = tracker.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'") and "script-src 'self';" in policy and "unsafe" not in policy
    assert "No peer has announced yet." in response.text
    script = tracker.get("/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert len(script.content) < 8000  # small, and hand-written
    assert tracker.get("/static/other.js").status_code == 404
    off = start_tracker("--no-dashboard")
    for path in ("/", "/search?q=x", f"/peers/{'0' * 64}", "/static/dashboard.js"):
        assert off.get(path).status_code == 404, path


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
    member_id = bytes(member.verify_key).hex()

    def refused(response: httpx.Response) -> None:
        assert response.status_code == 403 and error_of(response) == "dashboard_private", response.text
        assert "secret-builder" not in response.text and "loopback" in response.json()["error"]["message"]

    local = tracker.get("/")
    assert local.status_code == 200 and "secret-builder" in local.text
    assert "secret-builder" in tracker.get(f"/peers/{member_id}").text
    # A proxy on the tracker's host that the tracker does not trust, forwarding a stranger:
    for header, value in (("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "127.0.0.1, 203.0.113.9"),
                          ("x-real-ip", "203.0.113.9"), ("forwarded", 'for="[2001:db8::9]:4711";proto=https')):
        refused(tracker.get("/", headers={header: value}))
    for path in (f"/peers/{member_id}", "/search?q=x"):  # the other pages name peers too
        refused(tracker.get(path, headers={"x-real-ip": "203.0.113.9"}))
    assert tracker.get("/", headers={"forwarded": "for=127.0.0.1", "x-forwarded-for": "::1"}).status_code == 200
    refusals = 6
    if (address := non_loopback_address()) is not None:  # a client on another address, as a stranger is
        refused(httpx.get(f"http://{address}:{tracker.port}/", timeout=10))
        refusals += 1
        assert httpx.get(f"http://{address}:{tracker.port}/health", timeout=10).status_code == 200  # counts only
        assert httpx.get(f"http://{address}:{tracker.port}/api/v1/stats", timeout=10).status_code == 200
        stranger = httpx.get(f"http://{address}:{tracker.port}{PEERS_PATH}/{member_id}", timeout=10)
        assert error_of(stranger) == "unauthenticated"  # a read, closed under allowlist membership
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
