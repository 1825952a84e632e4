"""Prometheus metrics of the tracker, in a registry of its own, and the recent rates the dashboard shows."""

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RecentRate:
    """Events per second over the last `window` seconds, counted in `step`-second slots."""

    def __init__(self, window: int = 300, step: int = 10) -> None:
        self.step = step
        self._slots = [0] * (window // step)
        self._slot_times = [0] * (window // step)
        self._started = time.time()

    def add(self, now: float, count: int = 1) -> None:
        tick = int(now // self.step)
        index = tick % len(self._slots)
        if self._slot_times[index] != tick:
            self._slot_times[index], self._slots[index] = tick, 0
        self._slots[index] += count

    def per_second(self, now: float) -> float:
        tick = int(now // self.step)
        oldest = tick - len(self._slots) + 1
        total = sum(count for count, when in zip(self._slots, self._slot_times, strict=True) if when >= oldest)
        seconds = min(len(self._slots) * self.step, max(now - self._started, 1.0))
        return total / seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("peerix_tracker_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("peerix_tracker_http_request_duration_seconds", "Time to answer a request",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.announces = Counter("peerix_tracker_announces", "Announces applied, by kind (full, delta, heartbeat)",
                                 ["kind"], registry=r)
        self.announced_hashes = Counter("peerix_tracker_announced_hashes",
                                        "Hashes that announces added to or removed from peers' sets", ["change"],
                                        registry=r)
        self.lookups = Counter("peerix_tracker_lookups", "Lookup requests, by kind (single, batch)", ["kind"],
                               registry=r)
        self.lookup_hashes = Counter("peerix_tracker_lookup_hashes",
                                     "Hashes looked up, by result (hit: an online peer holds it; miss)", ["result"],
                                     registry=r)
        self.refusals = Counter("peerix_tracker_refusals", "Requests refused, by error code", ["code"], registry=r)
        self.expired = Counter("peerix_tracker_expired_peers", "Peers removed by the sweep after going silent",
                               registry=r)
        self.sweeps = Counter("peerix_tracker_sweeps", "Sweeps, by result (ok, failed)", ["result"], registry=r)
        self.announce_rate = RecentRate()
        self.lookup_rate = RecentRate()
        # Label children looked up once: labels() costs more than the increment it leads to.
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._announces = {kind: self.announces.labels(kind) for kind in ("full", "delta", "heartbeat")}
        self._lookups = {kind: self.lookups.labels(kind) for kind in ("single", "batch")}
        self._added, self._removed = (self.announced_hashes.labels(change) for change in ("added", "removed"))
        self._hits, self._misses = (self.lookup_hashes.labels(result) for result in ("hit", "miss"))

    def observe_sent(self, route: str, count: int) -> None:
        """The interface of peerix.common.asgi.MetricsMiddleware: the tracker does not count body bytes."""

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """The interface of peerix.common.asgi.MetricsMiddleware."""
        method = method if method in _METHODS else "OTHER"
        children = self._request_children.get((route, method, status))
        if children is None:
            children = self._request_children[route, method, status] = (
                self.requests.labels(route, method, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def announced(self, kind: str, added: int, removed: int, now: float) -> None:
        self._announces[kind].inc()
        self._added.inc(added)
        self._removed.inc(removed)
        self.announce_rate.add(now)

    def looked_up(self, kind: str, hits: int, misses: int, now: float) -> None:
        self._lookups[kind].inc()
        self._hits.inc(hits)
        self._misses.inc(misses)
        self.lookup_rate.add(now)

    def watch(self, gauges: Callable[[], dict[str, float]]) -> None:
        """Publish `gauges()` (name -> value, read at scrape time) as gauges."""
        self.registry.register(_GaugeCollector(gauges))


class _GaugeCollector:
    _HELP = {
        "peers_online": "Peers heard from within the offline TTL",
        "peers_offline": "Peers silent for longer than the offline TTL but not yet removed",
        "paths": "Distinct store path hashes held by any peer",
        "holdings": "Pairs of a peer and a hash it holds",
        "database_bytes": "Size of the database on disk, write-ahead log included",
    }

    def __init__(self, gauges: Callable[[], dict[str, float]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"peerix_tracker_{name}", self._HELP[name], value=value)
