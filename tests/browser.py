"""Pages as a person sees them: rendered by headless Chromium (Debian's), then read back.

`dump_dom` runs Chromium once for one page. `Browser` keeps one Chromium for many looks and drives it
over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on file
descriptors 3 and 4), so a test can read a page while it changes, type into it, and take screenshots.
"""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).parent.parent
# Screenshots are kept here for people to look at (CI can keep the directory as an artifact).
ARTIFACTS = Path(os.environ.get("PEERIX_TEST_ARTIFACTS", ROOT / "test-artifacts"))
WIDTH, HEIGHT = 1400, 1000


def chromium_args(profile: Path) -> list[str]:
    """Headless Chromium that resolves no host name at all (it would ask the machine's resolver for
    Google's hosts at start): pages are named by address."""
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}"]


def dump_dom(url: str, profile: Path) -> list[str]:
    """Chromium printing a page's DOM after load, once."""
    return [*chromium_args(profile), "--dump-dom", url]


class BrowserError(Exception):
    pass


class Browser:
    """One Chromium and one tab of WIDTH x HEIGHT, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        commands, self._commands = os.pipe()  # Chromium reads its fd 3 ...
        self._answers, answers = os.pipe()  # ... and writes its fd 4

        def on_3_and_4() -> None:  # in the child: whatever numbers the pipes got, make them 3 and 4
            read, write = fcntl.fcntl(commands, fcntl.F_DUPFD, 10), fcntl.fcntl(answers, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen([*chromium_args(profile), "--remote-debugging-pipe", "about:blank"],
                                        pass_fds=(3, 4), preexec_fn=on_3_and_4, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._next = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.tab("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        self.tab("Page.enable")

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise BrowserError(f"no answer to {method}")
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium went away during {method}")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer["result"]

    def tab(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self._session, **params)

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value in the page (awaited if it is a promise)."""
        result = self.tab("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = "true", timeout: float = 30) -> None:
        """Load a page and wait until the `ready` expression is true in it."""
        self.tab("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href === {json.dumps(url)} && ({ready})",
                      timeout)

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """The expression's value once it is true; a page still loading or being left is not ready yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := self.evaluate(f"(() => {{ try {{ return {expression}; }} catch {{ return false; }} }})()"):
                    return value
            except BrowserError as error:  # the page navigated away in the middle of the evaluation
                if "navigated" not in str(error):
                    raise
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def page(self) -> "Page":
        return Page(self.evaluate("document.documentElement.outerHTML"))

    def rows(self, table_id: str) -> list[list[str]]:
        """The body rows of a table as the page shows them: each cell's visible text."""
        return self.evaluate(f"[...document.querySelectorAll('#{table_id} > tbody > tr')]"
                             ".map(row => [...row.cells].map(cell => cell.innerText.trim()))")

    def text(self, selector: str) -> str:
        """The visible text of the first element that matches a CSS selector."""
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText.trim()")

    def dark(self, on: bool) -> None:
        """Emulate the system's dark (or light) colour scheme."""
        self.tab("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme",
                                                         "value": "dark" if on else "light"}])

    def contrast(self, selector: str) -> float:
        """The WCAG contrast ratio of an element's text against the page's background."""
        colours = self.evaluate(f"[getComputedStyle(document.querySelector({json.dumps(selector)})).color, "
                                "getComputedStyle(document.body).backgroundColor]")
        light = [_luminance(colour) for colour in colours]
        return (max(light) + 0.05) / (min(light) + 0.05)

    def screenshot(self, name: str) -> Path:
        """A WIDTH x HEIGHT PNG of the tab, kept in ARTIFACTS."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.tab("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


def accessibility_problems(browser: Browser) -> list[str]:
    """What keeps the page in the browser from being read with assistive technology: tables without a caption
    or column headers, inputs without a label, charts without a name, statuses that do not say what they mean."""
    checks = {
        "a table lacks a caption or column headers": "[...document.querySelectorAll('table')].every(t => t.caption "
        "&& t.tHead.querySelectorAll('th[scope=col]').length === t.tHead.rows[0].cells.length)",
        "an input has no label": "[...document.querySelectorAll('input')].every(i => i.labels.length === 1)",
        "a chart has no name": "[...document.querySelectorAll('svg')].every(s => s.getAttribute('role') === 'img' "
        "&& s.getAttribute('aria-label').length > 10)",
        "a status does not say what it means": "[...document.querySelectorAll('.status')].every(s => s.title.length "
        "> 20)",
        "a progress bar has no name": "[...document.querySelectorAll('progress')].every(p => p.labels.length || "
        "p.getAttribute('aria-label'))",
        "the page's language is not said": "document.documentElement.lang === 'en'",
    }
    return [problem for problem, check in checks.items() if not browser.evaluate(check)]


def _luminance(colour: str) -> float:
    """Relative luminance of a CSS `rgb(r, g, b)` colour."""
    channels = [int(c) / 255 for c in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3]]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


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
