"""Pages as a person sees them: rendered by headless Chromium (Debian's), then read back."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium")


def dump_dom(url: str, profile: Path) -> list[str]:
    """Headless Chromium printing the DOM after load. It resolves no host name at all (it would ask the
    machine's resolver for Google's hosts at start): pages are named by address."""
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}", "--dump-dom", url]


def rendered_dom(url: str, profile: Path) -> str:
    """The DOM after load, as Chromium built it."""
    result = subprocess.run(dump_dom(url, profile), capture_output=True, text=True, timeout=120)
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
