"""The dashboard as a person sees it: loaded by headless Chromium from a tracker with real peers."""

import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from trackertools import announce, new_key, random_hashes

CHROMIUM = shutil.which("chromium")


def rendered_dom(url: str, profile: Path) -> str:
    """The DOM after load, as Chromium built it (headless, offline-safe flags)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Page(HTMLParser):
    """What the page shows: visible text by element id, table rows as lists of cell texts, and tag names."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.text_by_id: dict[str, str] = {}
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.add(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        if tag in ("br", "meta", "link", "img"):
            if tag == "br" and self._cell is not None:
                self._cell.append("\n")
            return
        self._open.append((tag, attributes.get("id")))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text_by_id[element_id] = f"{self.text_by_id.get(element_id, '')} {data}"
        if self._cell is not None:
            self._cell.append(data)

    def value(self, card: str) -> str:
        return self.text_by_id[card].split()[0]


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
