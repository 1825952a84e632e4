"""Prometheus metrics of one daemon, in a registry of its own so several can share a process."""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .activity import Activity

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Metrics:
    def __init__(self, activity: Activity | None = None) -> None:
        self.activity = activity or Activity()  # the persistent, human-facing side of the same events
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
        self.peer_requests = Counter(
            "peerix_peer_requests", "Requests from peers by kind (narinfo, nar) and result "
            "(ok, not-found, refused, bad-request)", ["kind", "result"], registry=r,
        )
        self.peer_sent_bytes = Counter("peerix_peer_sent_bytes", "NAR bytes sent to peers", registry=r)
        self.peer_fetches = Counter(
            "peerix_peer_fetches", "Fetches from peers by kind (narinfo, nar) and result (ok, not-found, "
            "rejected, unreachable, failed, stalled, mismatch)", ["kind", "result"], registry=r,
        )
        self.peer_round_trips = Counter("peerix_peer_round_trips", "Requests sent to peers that wait for their "
                                        "answer, by kind (narinfo)", ["kind"], registry=r)
        self.prefetched_narinfos = Counter(
            "peerix_prefetched_narinfos", "Narinfos of references that peers added to their answers, by result "
            "(accepted: kept for a short time; refused: malformed, not a reference, no trusted signature; used: "
            "answered a lookup without a round trip)", ["result"], registry=r,
        )
        self.peer_received_bytes = Counter("peerix_peer_received_bytes", "NAR bytes received from peers",
                                           registry=r)
        self.peer_wire_bytes = Counter("peerix_peer_wire_bytes", "NAR bytes on the wire between peers by "
                                       "direction (sent, received), after zstd where used", ["direction"],
                                       registry=r)
        self.fast_path_offers = Counter("peerix_fast_path_offers", "NAR ranges peers were told to take over the "
                                        "fast path (HTTP) rather than iroh", registry=r)
        self.fast_path_ranges = Counter(
            "peerix_fast_path_ranges", "NAR ranges fetched from peers over the fast path by result (ok: opened; "
            "fallback: the fast path failed to open or broke, and the bytes came over iroh)", ["result"], registry=r,
        )
        self.fast_path_refused = Counter("peerix_fast_path_refused", "Requests to the fast-path listener refused "
                                         "(no valid ticket for the path, or not a NAR)", ["reason"], registry=r)
        self.summaries_fetched = Counter("peerix_summaries_fetched", "LAN peers' store summaries fetched, by result "
                                         "(ok; none: the peer publishes none; failed: unreachable or corrupt)",
                                         ["result"], registry=r)
        self.summary_questions = Counter(
            "peerix_summary_questions", "Narinfo questions to LAN peers whose store summary surely lacked the path, "
            "by what became of them (saved: a likely holder had it; asked-anyway: nobody else had it; "
            "claimed-too-little: one of them had it after all)", ["outcome"], registry=r,
        )
        self.nar_resumes = Counter("peerix_nar_resumes", "Parts of NARs continued on another peer after one failed "
                                   "in the middle", registry=r)
        self.nar_split_transfers = Counter("peerix_nar_split_transfers", "NARs fetched from several peers at once",
                                           registry=r)
        self.verification_failures = Counter(
            "peerix_verification_failures", "Peer answers refused by verification (narinfo: policy, "
            "nar: size or hash)", ["kind"], registry=r,
        )
        self.remote_lookups = Counter(
            "peerix_remote_lookups", "Narinfo lookups in the peer network by result (hit, miss, cached-miss, "
            "holders-failed: peers that may have it did not answer or are backing off; source-failed: no peer known "
            "to have it and the tracker cannot be asked)",
            ["result"], registry=r,
        )
        self.source_errors = Counter(
            "peerix_source_errors", "Failed candidate lookups by source (tracker, lan)", ["source"], registry=r,
        )
        self.refused = Counter(
            "peerix_http_refused", "HTTP requests refused with 403 by reason (client: not in the trusted networks; "
            "policy: not shareable)", ["reason"], registry=r,
        )
        self.lan_dropped = Counter(
            "peerix_lan_packets_dropped", "LAN discovery packets dropped by reason (oversized, malformed, "
            "unsigned, stale, replayed, unproven: no proof of the fleet token, wrong-token)", ["reason"], registry=r,
        )
        self.peers_refused = Counter(
            "peerix_peers_refused", "Peer requests refused (answered not-found) because the peer is not in the "
            "fleet, by protocol", ["alpn"], registry=r,
        )
        self.upstream_bytes = Counter("peerix_upstream_bytes", "Bytes fetched from the upstream cache for pull-through "
                                      "(as they crossed the network, compressed)", registry=r)
        self.upstream_fetches = Counter("peerix_upstream_fetches", "Paths pulled through by outcome (complete, "
                                        "failed), from the upstream or from the host holding the lease",
                                        ["outcome"], registry=r)
        self.upstream_saved_bytes = Counter("peerix_upstream_saved_bytes", "NAR bytes of pulled-through paths that "
                                            "came from the host holding the lease instead of the upstream", registry=r)
        self.lease_waits = Counter("peerix_lease_waits", "Pull-throughs that followed the host holding the path's "
                                   "lease instead of going upstream", registry=r)
        self.lease_takeovers = Counter("peerix_lease_takeovers", "Lease holders that failed while followed, so this "
                                       "host took over", registry=r)
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._sent_children: dict[str, Counter] = {}

    def from_upstream(self, count: int) -> None:
        self.upstream_bytes.inc(count)
        self.activity.count("bytes_from_upstream", count)

    def saved_from_upstream(self, count: int) -> None:
        self.upstream_saved_bytes.inc(count)
        self.activity.count("bytes_saved_from_upstream", count)

    def lease_waited(self, holder_failed: bool) -> None:
        self.lease_waits.inc()
        self.activity.count("lease_waits")
        if holder_failed:
            self.lease_takeovers.inc()
            self.activity.count("lease_takeovers")

    def observe_sent(self, route: str, count: int) -> None:
        """Body bytes of a response, as they are sent."""
        child = self._sent_children.get(route)
        if child is None:
            child = self._sent_children[route] = self.sent_bytes.labels(route)
        child.inc(count)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one response; label children are looked up once per (route, method, status)."""
        key = (route, method if method in _METHODS else "OTHER", status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(key[0], key[1], str(status)),
                self.latency.labels(route),
            )
        requests, latency = children
        requests.inc()
        latency.observe(seconds)

    def read_at_scrape(self, kind: str, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter or gauge whose value `read` gives when Prometheus asks: for figures other layers
        keep themselves (the NAR cache's hits, the peers known), which then know nothing of Prometheus."""
        self.registry.register(_Reading(kind, name, help, read))


class _Reading:
    def __init__(self, kind: str, name: str, help: str, read: Callable[[], float]) -> None:
        self.family = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}[kind]
        self.name, self.help, self.read = name, help, read

    def collect(self) -> Iterator[Metric]:
        yield self.family(self.name, self.help, value=self.read())
