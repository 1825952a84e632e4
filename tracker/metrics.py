"""Prometheus metrics of the tracker, in a registry of its own, and the last hour the dashboard charts.

Several replicas may serve one fleet. What a replica counts itself (requests, announces, lookups,
refusals, sweeps) carries `replica="<name>"`, so a fleet's totals are sums over replicas; what the
database says (peers, paths, holdings, its size) describes the fleet and carries no replica label:
every replica reports the same values. The last hour (announces and lookups per minute, peers online)
is this replica's, kept in memory from its start.
"""

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from peerix.common.series import Series

from .storage import Counts

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


MINUTE, HOUR = 60, 60  # the charts: per minute, for the last hour
RATE_WINDOW = 300  # seconds over which the dashboard's announces and lookups per minute are averaged


class Metrics:
    def __init__(self, replica: str) -> None:
        self.registry = CollectorRegistry()
        r = CollectorRegistry()  # this replica's own counters, published with its label
        self.registry.register(_ReplicaLabel(r, replica))
        self.registry.register(_FleetGauges(self))
        self.counts: Counts | None = None  # the database's last answer to a scrape; None when it failed
        self.database_bytes: int | None = None
        self.requests = Counter("peerix_tracker_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("peerix_tracker_http_request_duration_seconds", "Time to answer a request",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.audit_suppressed = Counter("peerix_tracker_audit_suppressed", "Refused writes left out of the audit "
                                        "trail by its rate limits", registry=r)
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
        self.sweeps = Counter("peerix_tracker_sweeps", "Sweeps, by result (ok, failed, skipped: another replica "
                              "was sweeping)", ["result"], registry=r)
        self.leases = Counter("peerix_tracker_leases", "Lease requests, by result (granted: taken or renewed; "
                              "held: another peer holds it; released)", ["result"], registry=r)
        self.history = {"peers_online": Series(MINUTE, HOUR, gauge=True), "announces": Series(MINUTE, HOUR),
                        "lookups": Series(MINUTE, HOUR)}
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
        self.history["announces"].add(now)

    def looked_up(self, kind: str, hits: int, misses: int, now: float) -> None:
        self._lookups[kind].inc()
        self._hits.inc(hits)
        self._misses.inc(misses)
        self.history["lookups"].add(now)

    def fleet(self, counts: Counts | None, database_bytes: int | None) -> None:
        """What the database says, for the scrape about to be answered."""
        self.counts, self.database_bytes = counts, database_bytes

    def counted(self, counts: Counts, now: float) -> None:
        """The fleet as the database just counted it: a point of the chart of peers online."""
        self.history["peers_online"].set(now, counts.peers_online)

    def per_minute(self, series: str, now: float) -> float:
        return self.history[series].rate(now, RATE_WINDOW) * 60

    def stats(self, counts: Counts, now: float) -> dict[str, Any]:
        """The fleet's counts and this replica's last hour: /api/v1/stats."""
        return {"now": round(now, 3), "counts": {"peers_online": counts.peers_online,
                                                  "peers_offline": counts.peers_offline, "paths": counts.paths,
                                                  "holdings": counts.holdings},
                "per_minute": {name: round(self.per_minute(name, now), 2) for name in ("announces", "lookups")},
                "history": {name: series.to_json(now) for name, series in self.history.items()}}


class _ReplicaLabel:
    """The metrics of a registry, each sample labelled with the replica that counted it."""

    def __init__(self, counters: CollectorRegistry, replica: str) -> None:
        self.counters = counters
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        for family in self.counters.collect():
            family.samples = [sample._replace(labels={**sample.labels, "replica": self.replica})
                              for sample in family.samples]
            yield family


class _FleetGauges:
    """The fleet as the database counts it; only `database_up` when the database did not answer."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        counts = self.metrics.counts
        yield GaugeMetricFamily("peerix_tracker_database_up", "Whether the database answered this scrape",
                                value=counts is not None)
        if counts is None:
            return
        for name, help, value in (
            ("peers_online", "Peers heard from within the offline TTL", counts.peers_online),
            ("peers_offline", "Peers silent for longer than the offline TTL, or departed, but not yet removed",
             counts.peers_offline),
            ("paths", "Distinct store path hashes held by any peer", counts.paths),
            ("holdings", "Pairs of a peer and a hash it holds", counts.holdings),
            ("database_bytes", "Size of the database on disk", self.metrics.database_bytes or 0),
        ):
            yield GaugeMetricFamily(f"peerix_tracker_{name}", help, value=value)
