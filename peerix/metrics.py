"""Prometheus metrics of one daemon, in a registry of its own so several can share a process."""

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "peerix_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "peerix_http_request_duration_seconds", "Time to answer a request, body included",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.sent_bytes = Counter("peerix_http_sent_bytes", "Response body bytes sent", ["route"], registry=r)
        self.narinfo = Counter(
            "peerix_narinfo_lookups", "narinfo lookups by result (hit, miss, invalid)", ["result"], registry=r
        )
        self.store_errors = Counter(
            "peerix_store_errors", "Lookups that failed inside the store and were answered 404", registry=r
        )
        self.nar_transfers = Counter(
            "peerix_nar_transfers", "NAR responses by outcome (complete, aborted, failed)", ["outcome"], registry=r
        )
