"""The host's dashboard as a person sees it in Chromium, during and after a real split transfer; its JSON
endpoints; its totals survive restarts.

One fleet for the module: a tracker, hosts A and B holding a 64 MiB path (and the test closure) with their
uploads capped so that the transfer to C takes seconds, and C, which fetches it from both at once.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import HEIGHT, WIDTH, accessibility_problems, png_size

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.telemetry import activity as activity_module
from peerix.telemetry.activity import UPSTREAM, Activity

from conftest import requires_nix
from nixtools import closure_of, path_info

pytestmark = requires_nix
CAP = "4M"  # bytes/s each holder uploads at most: 64 MiB from two holders takes about 8 s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, big_path: Path, closure: Path) -> Iterator[dict[str, Host]]:
    fleet = LocalFleet(tmp_path_factory.mktemp("fleet"))
    try:
        fleet.start_tracker()
        a, b, c = fleet.host("a"), fleet.host("b"), fleet.host("c")
        for holder in (a, b):
            holder.give(str(big_path), str(closure))
            holder.start("--max-upload-rate", CAP)
            fleet.wait_announced(holder, [str(big_path)])
        c.start("--split-threshold", "16M", "--upstream-rate", "2M")
        yield {"a": a, "b": b, "c": c}
    finally:
        fleet.close()


def activity(host: Host) -> dict:
    return httpx.get(host.url + "/api/v1/activity", timeout=10).json()


def transfers(host: Host, **query: int) -> dict:
    return httpx.get(host.url + "/api/v1/transfers", params=query, timeout=10).json()


def test_the_dashboard_follows_a_transfer_as_it_happens(fleet: dict[str, Host], browser, big_path: Path) -> None:
    a, c = fleet["a"], fleet["c"]
    size = path_info(big_path)[str(big_path)]["narSize"]  # 64 MiB and the NAR's framing
    browser.open(c.url + "/dashboard", "document.getElementById('live-state').innerText.startsWith('live')")
    nix = c.nix_realise(str(big_path))
    try:
        moving = f"[...document.querySelectorAll('#in-flight tbody tr')].find(r => r.cells[0].innerText === " \
                 f"{json.dumps(big_path.name)})"
        progress = f"{moving}.querySelector('progress').value"
        first = browser.wait_for(f"{progress} > 0 && {moving}.cells[5].innerText.includes('%') && {progress}")
        sources, served = browser.evaluate(f"{moving}.cells[5].innerText"), browser.text("#served-to-nix")
        assert sources.startswith("to Nix from ") and {"a", "b"} == {s.split()[0] for s in sources[12:].split(", ")}
        assert browser.evaluate(f"{moving}.querySelector('progress').max") == size
        browser.screenshot("host-dashboard-in-flight")
        # The live values change while the transfer runs, not only at its end.
        second = browser.wait_for(f"{progress} > {first} && {progress} < {size} && {progress}", timeout=20)
        assert second > first and browser.text("#served-to-nix") != served
        assert browser.evaluate(f"{moving}.cells[3].innerText").endswith("/s")  # its rate
    finally:
        _, stderr = nix.communicate(timeout=120)
    assert nix.returncode == 0, stderr

    # One row per fetch: C's Nix got the NAR once, from both holders by name; the page refreshed itself.
    row = f"[...document.querySelectorAll('#transfers tbody tr')].filter(r => r.cells[1].innerText === " \
          f"{json.dumps(big_path.name)}).map(r => [...r.cells].map(c => c.innerText.trim()))"
    [[_, _, to, sources, nar_size, moved, _, status, _]] = browser.wait_for(f"{row}.length && {row}", timeout=20)
    assert (to, nar_size, moved, status) == ("Nix", "64.0 MiB", "64.0 MiB", "complete")
    assert {share.split()[0] for share in sources.split(", ")} == {"a", "b"}
    assert browser.wait_for("document.querySelector('#in-flight td.empty') !== null")
    assert browser.text("#saved") == "64.0 MiB"
    assert browser.text("#saved-time") == "≈ 32 s at the upstream's 2.0 MiB/s (configured)"
    to_nix = browser.evaluate("document.querySelector('figure[data-series=\"history.to_nix\"] svg')"
                              ".getAttribute('aria-label')")
    assert to_nix.startswith("To Nix, last hour: now ") and "peak 0 B/s" not in to_nix
    assert accessibility_problems(browser) == []
    assert png_size(browser.screenshot("host-dashboard")) == (WIDTH, HEIGHT)
    browser.dark(True)
    try:
        assert browser.contrast("td") >= 7 and browser.contrast(".label") >= 4.5
        browser.screenshot("host-dashboard-dark")
    finally:
        browser.dark(False)

    # The JSON says the same: one fetch, its sources by name, what was saved.
    done = activity(c)
    listed = transfers(c)
    found = [t for t in listed["transfers"] if t["path"] == str(big_path)]
    assert len(found) == 1, listed
    [fetch] = found
    assert fetch["kind"] == "fetch" and fetch["outcome"] == "complete" and fetch["bytes"] == size
    assert {s["name"] for s in fetch["sources"]} == {"a", "b"} and sum(s["bytes"] for s in fetch["sources"]) >= size
    assert done["totals"]["fetches"] == 1 and done["saved"] == {"bytes": size, "upstream_rate": 2 << 20,
                                                                 "rate_source": "configured", "seconds": 32.0}

    # A's side of the split: one upload to C, made of the pieces C asked of it; not a row per piece.
    wait_until(lambda: transfers(a)["total"] == 1, "A's upload to settle", timeout=20)
    [upload] = transfers(a)["transfers"]
    assert (upload["kind"], upload["peer"]["name"], upload["outcome"]) == ("upload", "c", "complete")
    assert upload["pieces"] > 1 and upload["detail"].startswith(f"{upload['pieces']} pieces")
    assert 0 < upload["bytes"] < size  # its share; B sent the rest
    browser.open(a.url + "/dashboard")
    [[_, _, to, _, _, _, _, status, detail]] = browser.rows("transfers")
    assert (to, status) == ("peer c", "complete") and detail.startswith(f"{upload['pieces']} pieces")
    assert browser.evaluate("document.querySelector('#transfers .status').title") == \
        "the peer got every byte it asked this host for"


def test_totals_and_transfers_survive_a_restart(fleet: dict[str, Host], closure: Path) -> None:
    c = fleet["c"]
    c.realise(str(closure))
    before, listed = activity(c), transfers(c, limit=1000)
    paths = {t["path"] for t in listed["transfers"] if t["outcome"] == "complete"}
    assert set(closure_of(closure)) <= paths
    assert listed["total"] == len(listed["transfers"]) == before["totals"]["fetches"]
    assert transfers(c, offset=1, limit=2)["transfers"] == listed["transfers"][1:3]
    assert httpx.get(c.url + "/api/v1/transfers?limit=0", timeout=10).status_code == 400

    c.stop()  # SIGTERM: the totals and the transfers are written on the way out
    c.start("--split-threshold", "16M", "--upstream-rate", "2M")
    after = activity(c)
    assert after["totals"] == before["totals"] and after["since"] == before["since"]
    assert transfers(c, limit=1000) == listed


def test_an_activity_file_from_before_keeps_its_totals_and_its_rows_move_to_the_journal(tmp_path: Path) -> None:
    """Before the journal, activity.json held the rows too, and each fetch was two (from peer, to nix)."""
    old = {"since": 1000.0, "totals": {"bytes_to_nix": 5, "bytes_from_peers": 5, "transfers_complete": 2},
           "recent": [{"at": 1010.0, "direction": "to nix", "path": "x-a", "peer": "", "bytes": 5,
                       "seconds": 1.0, "outcome": "complete", "detail": ""},
                      {"at": 1009.0, "direction": "from peer", "path": "x-a", "peer": "0123456789",
                       "bytes": 5, "seconds": 1.0, "outcome": "complete", "detail": ""},
                      {"at": 1005.0, "direction": "to peer", "path": "y-b", "peer": "abcdefabcd",
                       "bytes": 7, "seconds": 2.0, "outcome": "stopped", "detail": "zstd 2.0x"}]}
    file = tmp_path / "activity.json"
    file.write_text(json.dumps(old))
    loaded = Activity.load(file)
    assert loaded.since == 1000.0 and loaded.totals["bytes_to_nix"] == 5 and loaded.totals["bytes_from_peers"] == 5
    rows = [(t.kind, t.path, t.outcome, t.peer) for t in loaded.recent]
    assert rows == [("fetch", "x-a", "complete", ""), ("upload", "y-b", "stopped", "abcdefabcd")]
    loaded.save(file)
    loaded.close()
    again = Activity.load(file)
    assert [(t.kind, t.path, t.outcome, t.peer) for t in again.recent] == rows and again.totals == loaded.totals


def test_the_journal_keeps_the_last_transfers_at_a_constant_cost(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activity_module, "RECENT", 10)
    file = tmp_path / "activity.json"
    activity = Activity.load(file)
    for number in range(25):
        fetch = activity.fetch(f"/nix/store/x-{number}", 1)
        activity.finish(fetch, "complete")
    activity.close()
    lines = [len((tmp_path / name).read_text().splitlines()) for name in ("transfers.jsonl.1", "transfers.jsonl")]
    assert lines == [10, 5]  # the file became the older half twice; never rewritten whole
    (tmp_path / "transfers.jsonl").open("a").write('{"id": 99, "kind": "fetch", "pa')  # a crash mid-line
    again = Activity.load(file)
    assert [t.path for t in again.recent] == [f"/nix/store/x-{n}" for n in range(24, 14, -1)]
    next_one = again.fetch("/nix/store/next", 1)
    assert next_one.id == 26  # ids go on from the last one
    again.finish(next_one, "complete")
    again.close()
    assert Activity.load(file).recent[0].path == "/nix/store/next"  # not lost behind the line cut short


def test_the_time_saved_is_at_the_configured_upstream_rate_else_at_the_measured_one() -> None:
    measured, configured = Activity(), Activity(upstream_rate=1 << 20)
    for activity in (measured, configured):
        fetch = activity.fetch("/nix/store/x-a", 12 << 20)
        fetch.credit("ab" * 32, 8 << 20)  # a peer
        fetch.credit(UPSTREAM, 4 << 20)
        fetch.advance(12 << 20)
        activity.finish(fetch, "complete")
    assert measured.saved() == {"bytes": 8 << 20, "upstream_rate": None, "rate_source": None, "seconds": None}
    measured.timed_upstream(4 << 20, 2.0)
    assert measured.saved() == {"bytes": 8 << 20, "upstream_rate": 2 << 20, "rate_source": "measured", "seconds": 4.0}
    assert configured.saved()["seconds"] == 8.0 and configured.saved()["rate_source"] == "configured"
