"""What the host has done, for people: lifetime totals and the latest transfers.

Prometheus counters restart at zero with the process; these totals persist in the state directory
(written every minute and at shutdown), so the dashboard tells the host's whole story.
"""

import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECENT = 50
TOTALS = (
    "bytes_to_nix", "bytes_to_peers", "bytes_from_peers", "narinfo_hits", "narinfo_misses",
    "transfers_complete", "transfers_failed", "verification_failures", "logs_served", "listings_served",
    "realisations_served", "bytes_from_upstream", "bytes_saved_from_upstream", "lease_waits", "lease_takeovers",
    "peers_refused",
)


@dataclass(frozen=True)
class Transfer:
    at: float  # wall clock
    direction: str  # "to nix", "to peer" or "from peer"
    path: str
    peer: str  # short peer id, or "" for the local Nix
    bytes: int
    seconds: float
    outcome: str  # complete, aborted, failed, mismatch
    detail: str = ""  # sources' shares, resumes, compression

    @property
    def rate(self) -> float:
        """MiB/s."""
        return self.bytes / (1 << 20) / max(self.seconds, 1e-6)


class Activity:
    def __init__(self) -> None:
        self.totals: Counter[str] = Counter({name: 0 for name in TOTALS})
        self.recent: deque[Transfer] = deque(maxlen=RECENT)
        self.since = time.time()

    def count(self, name: str, amount: int = 1) -> None:
        self.totals[name] += amount

    def transfer(self, direction: str, path: str, peer: str, size: int, seconds: float, outcome: str,
                 detail: str = "") -> None:
        self.recent.appendleft(Transfer(time.time(), direction, path, peer, size, seconds, outcome, detail))
        self.totals["transfers_complete" if outcome in ("complete", "stopped") else "transfers_failed"] += 1
        total = {"to nix": "bytes_to_nix", "to peer": "bytes_to_peers", "from peer": "bytes_from_peers"}[direction]
        self.totals[total] += size

    @property
    def hit_ratio(self) -> float | None:
        asked = self.totals["narinfo_hits"] + self.totals["narinfo_misses"]
        return self.totals["narinfo_hits"] / asked if asked else None

    def save(self, path: Path) -> None:
        data = {"since": self.since, "totals": dict(self.totals), "recent": [asdict(t) for t in self.recent]}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> "Activity":
        activity = cls()
        try:
            data = json.loads(path.read_text())
            activity.since = float(data["since"])
            activity.totals.update({k: int(v) for k, v in data["totals"].items() if k in TOTALS})
            activity.recent.extend(Transfer(**t) for t in data["recent"][:RECENT])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as error:
            log.warning("activity file unreadable, starting afresh path=%s error=%s", path, error)
        return activity
