"""Progress for people: bytes, rate and ETA on one line of a terminal; nothing when piped."""

import sys
import time
from typing import TextIO


def _mib(count: float) -> str:
    return f"{count / (1 << 20):.1f} MiB"


class Progress:
    def __init__(self, total: int, what: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.what = what
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.live or now - self._shown < 0.1:
            return
        self._shown = now
        rate = done / max(now - self.started, 1e-6)
        eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
        share = f"{min(done / self.total, 1):4.0%} " if self.total else ""
        self.stream.write(f"\r{self.what}: {share}{_mib(done)} of {_mib(self.total)}, "
                          f"{rate / (1 << 20):.1f} MiB/s, ETA {eta:.0f}s\x1b[K")
        self.stream.flush()

    def finish(self, done: int, summary: str) -> None:
        seconds = time.monotonic() - self.started
        if self.live:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{summary}: {_mib(done)} in {seconds:.1f}s "
                          f"({done / (1 << 20) / max(seconds, 1e-6):.1f} MiB/s)\n")
        self.stream.flush()
