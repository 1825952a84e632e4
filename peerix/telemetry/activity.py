"""What the host has done, for people: what is moving now, the last hour, lifetime totals, the latest transfers.

Two kinds of transfer, one row each:

- a *fetch* is one NAR handed to a Nix (this host's, or a client of /store/), with the sources that
  supplied its bytes: peers by name, the upstream cache, or this host's own store;
- an *upload* is one NAR sent to one peer, however many ranges that peer asked for: a split transfer
  asks each of its peers for piece after piece, and a peer racing others for a range may be stopped
  because another answered first. Ranges of the same path for the same peer that follow each other
  within JOIN_WINDOW are one upload.

The swarm credits the fetch it works for without the layers between carrying it: the HTTP face sets
the fetch as the context's current one (`fetching`) while it opens the NAR, and the transfer that
starts then reads it (`current_fetch`).

Prometheus counters restart at zero with the process; the totals persist in the state directory
(activity.json, written every minute and at shutdown), and so do the recent transfers: each is appended
to transfers.jsonl as it ends (a line, not the whole list: writing 10,000 rows at once would hold the
event loop for a good part of a second). When that file has RECENT lines it becomes transfers.jsonl.1
and a new one begins, so the two always hold the last RECENT transfers, at a constant cost per transfer.
"""

import contextlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..common.series import Series

log = logging.getLogger(__name__)

RECENT = 10_000  # finished transfers kept
STEP, SLOTS = 10, 360  # the last hour, in 10-second slots
JOIN_WINDOW = 5.0  # seconds: a peer's next range of a path within this is the same upload
RATE_WINDOW = 5.0  # seconds over which a transfer's current rate is measured
LOCAL, UPSTREAM = "local", "upstream"  # sources that are not peers
TOTALS = (
    "bytes_to_nix", "bytes_to_peers", "bytes_from_peers", "bytes_saved", "narinfo_hits", "narinfo_misses",
    "fetches", "fetches_failed", "uploads", "verification_failures", "logs_served", "listings_served",
    "realisations_served", "bytes_from_upstream", "bytes_saved_from_upstream", "lease_waits", "lease_takeovers",
    "upstream_nar_bytes", "upstream_milliseconds", "peers_refused",
)
# Totals whose last hour is charted, and the name of their series.
CHARTED = {"bytes_to_nix": "to_nix", "bytes_from_peers": "from_peers", "bytes_to_peers": "to_peers",
           "bytes_from_upstream": "from_upstream", "narinfo_hits": "narinfo_hits", "narinfo_misses": "narinfo_misses"}


@dataclass
class Transfer:
    """A finished fetch or upload, as the dashboard lists it and activity.json keeps it."""

    id: int
    kind: str  # fetch or upload
    path: str
    size: int  # the NAR's size
    bytes: int  # moved by this transfer (an upload: the ranges this peer asked of us)
    started: float  # wall clock
    seconds: float
    outcome: str  # fetch: complete, aborted (Nix went away), failed; upload: complete, stopped, failed
    peer: str = ""  # upload: the receiving peer's id
    name: str = ""  # upload: its name, when known
    sources: list[list] = field(default_factory=list)  # fetch: [key, name, bytes]: peer id, upstream or local
    pieces: int = 1  # upload: ranges served
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "path": self.path, "size": self.size, "bytes": self.bytes,
                "started": round(self.started, 3), "seconds": round(self.seconds, 3),
                "rate": round(self.bytes / max(self.seconds, 1e-3)), "outcome": self.outcome,
                "peer": _peer_json(self.peer, self.name), "sources": _sources_json(self.sources),
                "pieces": self.pieces, "detail": self.detail}


class Live:
    """A transfer still moving: its bytes so far, its current rate and, for a fetch, who supplied what."""

    def __init__(self, activity: "Activity", id: int, kind: str, path: str, size: int, peer: str = "",
                 name: str = "") -> None:
        self.activity = activity
        self.id, self.kind, self.path, self.size, self.peer, self.name = id, kind, path, size, peer, name
        self.started = time.time()
        self.began = time.monotonic()
        self.bytes = 0
        self.sources: dict[str, list] = {}  # key -> [name, bytes]
        self.pieces: Counter[str] = Counter()  # upload: finished ranges by outcome
        self.open = 0  # upload: ranges being sent
        self.ended = 0.0  # upload: when its last range ended (monotonic)
        self.detail = ""
        self._marks: deque[tuple[float, int]] = deque([(self.began, 0)])

    def advance(self, count: int) -> None:
        """Bytes handed on: to Nix for a fetch, to the peer for an upload."""
        self.bytes += count
        self.activity.count("bytes_to_nix" if self.kind == "fetch" else "bytes_to_peers", count)
        now = time.monotonic()
        if now - self._marks[-1][0] >= 0.25:
            self._marks.append((now, self.bytes))
            while len(self._marks) > 2 and now - self._marks[1][0] >= RATE_WINDOW:
                self._marks.popleft()

    def credit(self, source: str, count: int) -> None:
        """Bytes of this fetch that `source` supplied: a peer id, UPSTREAM or LOCAL."""
        entry = self.sources.get(source)
        if entry is None:
            entry = self.sources[source] = [self.activity.source_name(source), 0]
        entry[1] += count
        if source not in (UPSTREAM, LOCAL):
            self.activity.count("bytes_from_peers", count)

    def rate(self, now: float) -> float:
        """Bytes per second over the last RATE_WINDOW seconds."""
        since, then = self._marks[0]
        return (self.bytes - then) / max(now - since, 1.0)

    def to_json(self, now: float) -> dict[str, Any]:
        rate = self.rate(now)
        left = self.size - self.bytes
        return {"id": self.id, "kind": self.kind, "path": self.path, "size": self.size, "bytes": self.bytes,
                "started": round(self.started, 3), "seconds": round(now - self.began, 3), "rate": round(rate),
                "eta": round(left / rate, 1) if rate > 0 and left > 0 else None,
                "peer": _peer_json(self.peer, self.name),
                "sources": _sources_json([key, name, count] for key, (name, count) in self.sources.items()),
                "pieces": self.open + sum(self.pieces.values()) if self.kind == "upload" else 1,
                "detail": self.detail}


_current: ContextVar[Live | None] = ContextVar("peerix_fetch", default=None)


@contextlib.contextmanager
def fetching(fetch: Live) -> Iterator[None]:
    """Make `fetch` the one that transfers started in this block work for."""
    token = _current.set(fetch)
    try:
        yield
    finally:
        _current.reset(token)


def current_fetch() -> Live | None:
    return _current.get()


class Activity:
    def __init__(self, upstream_rate: int | None = None, journal: Path | None = None) -> None:
        self.totals: Counter[str] = Counter({name: 0 for name in TOTALS})
        self.recent: deque[Transfer] = deque(maxlen=RECENT)
        self.history = {name: Series(STEP, SLOTS) for name in CHARTED.values()}
        self.live: dict[int, Live] = {}
        self.since = time.time()
        self.upstream_rate = upstream_rate  # bytes/s, as configured; None: as measured
        self.upstream_name = UPSTREAM
        self.peer_name: Callable[[str], str | None] = lambda peer_id: None  # the daemon knows who is who
        self._next_id = 1
        self._uploads: dict[tuple[str, str], Live] = {}  # (peer, path) -> its upload, until it settles
        self._journal_path = journal  # transfers.jsonl: the recent transfers, a line each (None: memory only)
        self._journal: TextIO | None = None
        self._journal_lines = 0

    def count(self, name: str, amount: int = 1) -> None:
        self.totals[name] += amount
        if (series := CHARTED.get(name)) is not None:
            self.history[series].add(time.time(), amount)

    def source_name(self, source: str) -> str:
        if source == UPSTREAM:
            return self.upstream_name
        if source == LOCAL:
            return "this host"
        return self.peer_name(source) or source[:10]

    def fetch(self, path: str, size: int) -> Live:
        """A NAR about to go to Nix; `finish` it."""
        return self._begin("fetch", path, size)

    def finish(self, fetch: Live, outcome: str, detail: str = "") -> None:
        del self.live[fetch.id]
        sources = [[key, name, count] for key, (name, count) in fetch.sources.items()]
        if not sources and fetch.bytes:
            sources = [[LOCAL, self.source_name(LOCAL), fetch.bytes]]
        self.totals["fetches"] += 1
        if outcome == "failed":
            self.totals["fetches_failed"] += 1
        elif outcome == "complete":
            from_peers = sum(count for key, _, count in sources if key not in (UPSTREAM, LOCAL))
            self.totals["bytes_saved"] += min(from_peers, fetch.size)
        self._record(Transfer(fetch.id, "fetch", fetch.path, fetch.size, fetch.bytes, fetch.started,
                              time.monotonic() - fetch.began, outcome, sources=sources,
                              detail="; ".join(filter(None, (fetch.detail, detail)))))

    def upload(self, peer: str, path: str, size: int, name: str | None = None) -> Live:
        """A range of a NAR about to go to a peer: part of that peer's upload of the path (`piece_done`).
        `name` is what the peer calls itself in its request, else what the LAN or the tracker said."""
        now = time.monotonic()
        self._settle(now)
        upload = self._uploads.get((peer, path))
        if upload is None:
            upload = self._uploads[peer, path] = self._begin("upload", path, size, peer,
                                                             name or self.peer_name(peer) or "")
        upload.open += 1
        return upload

    def piece_done(self, upload: Live, outcome: str, detail: str = "") -> None:
        upload.open -= 1
        upload.pieces[outcome] += 1
        upload.ended = time.monotonic()
        upload.detail = detail or upload.detail

    def _begin(self, kind: str, path: str, size: int, peer: str = "", name: str = "") -> Live:
        live = self.live[self._next_id] = Live(self, self._next_id, kind, path, size, peer, name)
        self._next_id += 1
        return live

    def _settle(self, now: float) -> None:
        """Uploads whose last range ended JOIN_WINDOW ago are done: to the recent transfers."""
        for key, upload in list(self._uploads.items()):
            if upload.open or now - upload.ended < JOIN_WINDOW:
                continue
            del self._uploads[key], self.live[upload.id]
            pieces = upload.pieces
            outcome = "complete" if pieces["complete"] else "stopped" if pieces["stopped"] else "failed"
            count = sum(pieces.values())
            notes = [f"{count} pieces"] if count > 1 else []
            notes += [f"{pieces[o]} {o}" for o in ("stopped", "failed") if pieces[o] and count > 1]
            self.totals["uploads"] += 1
            self._record(Transfer(upload.id, "upload", upload.path, upload.size, upload.bytes, upload.started,
                                  upload.ended - upload.began, outcome, upload.peer, upload.name, pieces=count,
                                  detail=", ".join(filter(None, (*notes, upload.detail)))))

    def _record(self, transfer: Transfer) -> None:
        """A finished transfer: first of the recent ones, and a line of the journal."""
        self.recent.appendleft(transfer)
        if self._journal_path is None:
            return
        try:
            if self._journal is None or self._journal_lines >= RECENT:
                self._next_journal()
            assert self._journal is not None
            self._journal.write(json.dumps(transfer.__dict__, separators=(",", ":")) + "\n")
            self._journal.flush()
            self._journal_lines += 1
        except OSError as error:
            log.warning("transfer not written to the journal path=%s error=%s", self._journal_path, error)

    def _next_journal(self) -> None:
        """The journal has RECENT lines (or is not open yet): it becomes the older half of the last RECENT."""
        assert self._journal_path is not None
        if self._journal is not None:
            self._journal.close()
            os.replace(self._journal_path, _older(self._journal_path))
            self._journal_lines = 0
        self._journal = open(self._journal_path, "a+")
        if end := self._journal.tell():
            self._journal.seek(end - 1)
            if self._journal.read(1) != "\n":
                self._journal.write("\n")  # a line cut short by a crash stays alone, unread

    def in_flight(self) -> list[Live]:
        """What is moving, oldest first."""
        self._settle(time.monotonic())
        return [live for live in self.live.values() if live.kind == "fetch" or live.open]

    def recent_page(self, offset: int, limit: int) -> list[Transfer]:
        self._settle(time.monotonic())
        return [self.recent[i] for i in range(offset, min(offset + limit, len(self.recent)))]

    def timed_upstream(self, nar_bytes: int, seconds: float) -> None:
        """A download from the upstream: what its rate is measured from."""
        self.totals["upstream_nar_bytes"] += nar_bytes
        self.totals["upstream_milliseconds"] += round(seconds * 1000)

    @property
    def hit_ratio(self) -> float | None:
        asked = self.totals["narinfo_hits"] + self.totals["narinfo_misses"]
        return self.totals["narinfo_hits"] / asked if asked else None

    def saved(self) -> dict[str, Any]:
        """The bytes Nix got from peers instead of the upstream, and how long the upstream would have
        taken for them: at the configured rate, else at the rate measured on downloads from it."""
        saved = self.totals["bytes_saved"]
        rate, how = self.upstream_rate, "configured"
        if rate is None and self.totals["upstream_milliseconds"]:
            rate = round(self.totals["upstream_nar_bytes"] * 1000 / self.totals["upstream_milliseconds"])
            how = "measured"
        if not rate:
            rate, how = None, None
        return {"bytes": saved, "upstream_rate": rate, "rate_source": how,
                "seconds": round(saved / rate, 1) if rate else None}

    def to_json(self, now: float) -> dict[str, Any]:
        """Everything the dashboard's live parts show: /api/v1/activity."""
        hits, misses = (self.history[name].values(now) for name in ("narinfo_hits", "narinfo_misses"))
        history = {name: self.history[name].to_json(now) for name in ("to_nix", "from_peers", "to_peers",
                                                                        "from_upstream")}
        current = max(1.0, now % STEP)  # seconds of the last slot gone by
        for series in history.values():
            values = series["values"]
            series["values"] = [None if v is None else round(v / (current if i == len(values) - 1 else STEP))
                                for i, v in enumerate(values)]
            series["unit"] = "bytes/s"
        history["hit_ratio"] = {"step": STEP, "end": history["to_nix"]["end"], "unit": "ratio", "values": [
            None if h is None or m is None or not h + m else round(h / (h + m), 3) for h, m in zip(hits, misses,
                                                                                                    strict=True)]}
        return {"since": round(self.since, 3), "now": round(now, 3), "totals": dict(self.totals),
                "hit_ratio": self.hit_ratio, "saved": self.saved(),
                "in_flight": [live.to_json(time.monotonic()) for live in self.in_flight()], "history": history}

    def save(self, path: Path) -> None:
        """The totals (the transfers are in the journal already)."""
        self._settle(time.monotonic())
        data = {"since": self.since, "next_id": self._next_id, "totals": dict(self.totals)}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    @classmethod
    def load(cls, path: Path, upstream_rate: int | None = None) -> "Activity":
        """The saved totals, and the recent transfers from the journal beside them (transfers.jsonl). An
        activity file from before the journal keeps its totals and moves its rows that fit into the journal
        (it counted each fetch twice: as from peer and as to nix)."""
        activity = cls(upstream_rate, path.with_name("transfers.jsonl"))
        before: list[Transfer] = []
        try:
            data = json.loads(path.read_text())
            activity.since = float(data["since"])
            activity.totals.update({k: int(v) for k, v in data["totals"].items() if k in TOTALS})
            before = list(filter(None, map(_from_before, data.get("recent", [])[:RECENT])))
            activity._next_id = int(data.get("next_id") or 1)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("activity file unreadable, starting afresh path=%s error=%s", path, error)
        for journal in (_older(activity._journal_path), activity._journal_path):
            activity.recent.extendleft(_read_journal(journal))
        with contextlib.suppress(FileNotFoundError), open(activity._journal_path) as current:
            activity._journal_lines = sum(1 for _ in current)
        activity._next_id = max([activity._next_id, *(t.id + 1 for t in activity.recent)])
        for transfer in reversed(before):
            transfer.id, activity._next_id = activity._next_id, activity._next_id + 1
            activity._record(transfer)
        return activity


def _older(journal: Path) -> Path:
    return journal.with_name(journal.name + ".1")


def _read_journal(path: Path) -> list[Transfer]:
    """The transfers a journal holds, oldest first; a damaged line (a crash in the middle of a write) is skipped."""
    found, damaged = [], 0
    with contextlib.suppress(FileNotFoundError), open(path) as lines:
        for line in lines:
            try:
                found.append(Transfer(**json.loads(line)))
            except (ValueError, TypeError):
                damaged += 1
    if damaged:
        log.warning("journal lines unreadable path=%s lines=%d", path, damaged)
    return found


def _from_before(row: dict[str, Any]) -> Transfer | None:
    """A row of an activity file from before the journal: {at, direction, path, peer, bytes, seconds,
    outcome, detail}; a "from peer" row was the same fetch as a "to nix" one."""
    if row["direction"] == "from peer":
        return None
    fetch = row["direction"] == "to nix"
    return Transfer(0, "fetch" if fetch else "upload", row["path"], row["bytes"], row["bytes"],
                    row["at"] - row["seconds"], row["seconds"], row["outcome"], "" if fetch else row["peer"],
                    detail=row.get("detail", ""))


def _peer_json(peer: str, name: str) -> dict[str, str | None] | None:
    return {"id": peer, "name": name or None} if peer else None


def _sources_json(sources: Any) -> list[dict[str, Any]]:
    return [{"id": key, "name": name, "bytes": count} for key, name, count in sources]
