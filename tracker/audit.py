"""The audit trail: who joined or left membership, what admins did, which writes were refused.

Append-only JSON lines, one an event: `time` (ISO 8601, UTC), `actor` (`peer:<id>`, `admin:<token
fingerprint>`, `client:<address>` for a request whose signature did not check out, or `tracker`),
`event`, and what happened. Under systemd (JOURNAL_STREAM set) each line also goes to stdout, which
journald keeps. Events:

- `joined`, `left`: a peer's first accepted write; its leaving (deregistered with forget, expired,
  taken off the allowlist);
- `removed`, `purged`: admin removals and purges;
- `allowlist`, `tokens`: changes to the allowlist or the network tokens (tokens by fingerprint, the
  first 12 hex digits of their SHA-256: never the token itself);
- `refused`: a write refused (any 4xx but a 409, which only asks for the full set), at most
  `REFUSALS_BURST` lines then one every `1/REFUSALS_RATE` s per actor, and `GLOBAL_BURST` then
  `GLOBAL_RATE` a second in all, so a flood cannot fill the disk; a line after a pause counts the
  refusals left out (`suppressed`);
- `state`: the membership the file starts from.

The file is rotated when it would pass `max_size` (the old one becomes `FILE.1`, replacing the one
before): at most twice `max_size` on disk. Each file starts with a `state` line, so it is
readable on its own, and a tracker that starts again compares its allowlist and tokens with the
state its file ends in: what changed while it was down is recorded as the changes they are.
"""

import collections
import datetime
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

REFUSALS_BURST, REFUSALS_RATE = 5, 1 / 60
GLOBAL_BURST, GLOBAL_RATE = 100, 1.0
TRACKER = "tracker"


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def admin_actor(token: str) -> str:
    return f"admin:{fingerprint(token)}"


class AuditTrail:
    def __init__(self, path: Path | None, max_size: int, journal: bool = False,
                 on_suppressed: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.max_size = max_size
        self.journal = journal  # under systemd: every line to stdout as well
        self.on_suppressed = on_suppressed
        self.state: dict | None = None  # the membership as the trail last recorded it
        self._file = None
        self._size = 0
        self._limits = RateLimiter(REFUSALS_RATE, REFUSALS_BURST)
        self._overall = RateLimiter(GLOBAL_RATE, GLOBAL_BURST)
        self._suppressed: collections.Counter[str] = collections.Counter()

    def open(self) -> None:
        """Open the file (0600, its directory made 0700) and read the state it ends in."""
        if self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state = _replay(_lines(self.path))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._size = self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, actor: str, event: str, **details: object) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, "actor": actor, "event": event, **details}, separators=(",", ":")) + "\n"
        if self.journal:
            sys.stdout.write(line)
            sys.stdout.flush()
        if self._file is None:
            return
        try:
            if self._size + len(line) > self.max_size and self._size:
                self._rotate()
            self._write(line)
        except OSError as error:  # the trail must not take the tracker down with it; the log says it
            log.error("audit trail write failed path=%s error=%s", self.path, error)

    def refused(self, actor: str, now: float, **details: object) -> None:
        """A refused write, within the per-actor and overall limits; the rest are counted."""
        if self._limits.take(actor, now) or self._overall.take(None, now):
            self._suppressed[actor] += 1
            self.on_suppressed()
            return
        suppressed = self._suppressed.pop(actor, 0)
        self.record(actor, "refused", **details, **({"suppressed": suppressed} if suppressed else {}))

    def prune(self, now: float) -> None:
        self._limits.prune(now)
        if len(self._suppressed) > 10_000:  # a flood of forged identities: their counts are not worth the memory
            self._suppressed.clear()

    def membership(self, membership: str, allowlist: Iterable[str], tokens: Iterable[str], actor: str) -> None:
        """Record what changed in the allowlist and tokens since the trail's state (tokens by fingerprint)."""
        state = {"membership": membership, "allowlist": sorted(allowlist), "tokens": sorted(map(fingerprint, tokens))}
        before = self.state
        self.state = state
        if before is None:
            self.record(TRACKER, "state", **state)
            return
        for kind in ("allowlist", "tokens"):
            added = sorted(set(state[kind]) - set(before[kind]))
            removed = sorted(set(before[kind]) - set(state[kind]))
            if added or removed:
                self.record(actor, kind, membership=membership, added=added, removed=removed)

    def read(self, since: float | None, limit: int) -> list[dict]:
        """The last `limit` events at or after `since` (Unix time), oldest first, from both files."""
        if self.path is None:
            return []
        events: collections.deque[dict] = collections.deque(maxlen=limit)
        for line in _lines(self.path.with_name(self.path.name + ".1"), self.path):
            try:
                event = json.loads(line)
                when = datetime.datetime.fromisoformat(event["time"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            if since is None or when >= since:
                events.append(event)
        return list(events)

    def _write(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._size += len(line.encode())

    def _rotate(self) -> None:
        assert self._file is not None and self.path is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._size = 0
        if self.state is not None:
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
            self._write(json.dumps({"time": now, "actor": TRACKER, "event": "state", **self.state},
                                   separators=(",", ":")) + "\n")
        log.info("audit trail rotated path=%s", self.path)


def _lines(*paths: Path) -> Iterable[str]:
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                yield from file
        except FileNotFoundError:
            continue


def _replay(lines: Iterable[str]) -> dict | None:
    """The membership state a file ends in: its `state` line with the changes after it applied."""
    state: dict | None = None
    for line in lines:
        try:
            event = json.loads(line)
            kind = event["event"]
            if kind == "state":
                state = {key: event[key] for key in ("membership", "allowlist", "tokens")}
            elif kind in ("allowlist", "tokens") and state is not None:
                state[kind] = sorted((set(state[kind]) | set(event["added"])) - set(event["removed"]))
                state["membership"] = event.get("membership", state["membership"])
        except (ValueError, KeyError, TypeError):
            continue
    return state
