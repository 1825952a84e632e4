"""The background sweep: removes peers silent for too long and prunes what the limits no longer need.

It runs once at start (peers may have gone silent while the tracker was down), then every
`interval`, and keeps how its last run went for /health: a sweep that failed, or has not finished
for three intervals, makes the tracker `degraded`. Replicas sharing a database sweep one at a time:
a replica that finds another at it counts the round as done (`skipped`), since that one removes
what this one would have.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from .audit import TRACKER, AuditTrail
from .metrics import Metrics
from .storage import DatabaseError, Storage

log = logging.getLogger(__name__)
audit = logging.getLogger("tracker.audit")


class Sweeper:
    def __init__(self, storage: Storage, remove_after: float, interval: float, metrics: Metrics,
                 prune: Sequence[Callable[[float], None]] = (), trail: AuditTrail | None = None) -> None:
        self.storage = storage
        self.trail = trail
        self.remove_after = remove_after
        self.interval = interval
        self.metrics = metrics
        self.prune = prune
        self.last_run: float | None = None
        self.last_duration = 0.0
        self.last_removed = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self.interval)

    async def sweep(self) -> None:
        started = time.monotonic()
        now = time.time()
        try:
            removed = await self.storage.expire(now - self.remove_after)
            for prune in self.prune:
                prune(now)
        except Exception as error:  # the loop must outlive a bad sweep; /health reports it
            self.last_error = f"{type(error).__name__}: {error}"
            self.metrics.sweeps.labels("failed").inc()
            if isinstance(error, DatabaseError):  # an outage, said in a line; anything else is a bug
                log.error("sweep failed error=%s", error)
            else:
                log.exception("sweep failed")
            return
        self.metrics.sweeps.labels("ok" if removed is not None else "skipped").inc()
        removed = removed or []
        for peer in removed:
            audit.info("peer expired peer=%s name=%r paths=%d silent_for=%.0f", peer.peer_id, peer.name, peer.paths,
                       now - peer.last_seen)
            if self.trail is not None:
                self.trail.record(TRACKER, "left", peer=peer.peer_id, name=peer.name, reason="expired",
                                  paths=peer.paths, silent_for=round(now - peer.last_seen))
        self.metrics.expired.inc(len(removed))
        self.last_run, self.last_removed, self.last_error = now, len(removed), None
        self.last_duration = time.monotonic() - started

    def status(self, now: float) -> dict:
        if self._task is None or self._task.done():
            state = "stopped"
        elif self.last_error:
            state = "failed"
        elif self.last_run is None or now - self.last_run > 3 * self.interval:
            state = "late"
        else:
            state = "ok"
        return {"status": state, "interval": self.interval, "last_run": self.last_run,
                "last_duration": round(self.last_duration, 4), "last_removed": self.last_removed,
                "last_error": self.last_error}
