"""Peer reputation: who to ask first, and who not to ask for a while.

Success rate (smoothed, so a new peer starts in the middle), latency and recency order the
candidates; each failure in a row doubles how long a peer is left alone, so a dead peer costs
one connect timeout and then nothing until its backoff expires.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class PeerStats:
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    latency: float | None = None  # smoothed seconds to the first answer
    last_success: float = 0.0
    last_failure: float = 0.0
    last_error: str = ""
    backoff_until: float = 0.0
    banned_until: float = 0.0  # proven to have sent wrong bytes: not asked until then, whatever it answers
    ban_reason: str = ""
    restarts: int = 0  # new processes of the peer seen so far

    @property
    def success_rate(self) -> float:
        return (self.successes + 1) / (self.successes + self.failures + 2)


class Reputation:
    def __init__(self, base_backoff: float = 2.0, max_backoff: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self.peers: dict[str, PeerStats] = {}

    def _stats(self, peer_id: str) -> PeerStats:
        return self.peers.setdefault(peer_id, PeerStats())

    def succeeded(self, peer_id: str, latency: float) -> None:
        stats = self._stats(peer_id)
        stats.successes += 1
        stats.consecutive_failures = 0
        stats.backoff_until = 0.0
        stats.last_success = self.clock()
        stats.latency = latency if stats.latency is None else 0.7 * stats.latency + 0.3 * latency

    def failed(self, peer_id: str, error: str) -> None:
        stats = self._stats(peer_id)
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_failure = now = self.clock()
        stats.last_error = error
        delay = min(self.max_backoff, self.base_backoff * 2 ** (stats.consecutive_failures - 1))
        stats.backoff_until = now + delay

    def restarted(self, peer_id: str) -> None:
        """A new process of the peer: the old one's failures in a row say nothing about it, so its
        backoff ends (a ban does not: the same key lied)."""
        stats = self.peers.get(peer_id)
        if stats is not None:  # a peer never asked needs no record (and is askable anyway)
            stats.restarts += 1
            stats.consecutive_failures = 0
            stats.backoff_until = 0.0

    def ban(self, peer_id: str, seconds: float, error: str) -> None:
        """A peer caught sending bytes that fail their hash: a backoff that no later success lifts
        (the failure itself is recorded with `failed`)."""
        stats = self._stats(peer_id)
        stats.banned_until, stats.ban_reason = self.clock() + seconds, error

    def restarts(self, peer_id: str) -> int:
        stats = self.peers.get(peer_id)
        return stats.restarts if stats else 0

    def worth_a_retry(self, peer_id: str) -> bool:
        """Backing off after one failure only: when every holder of a path is backing off, those are
        asked anyway (a holder that restarted failed once; a dead one soon fails more)."""
        stats = self.peers.get(peer_id)
        return stats is None or (stats.consecutive_failures <= 1 and stats.banned_until <= self.clock())

    def banned(self, peer_id: str) -> bool:
        stats = self.peers.get(peer_id)
        return stats is not None and stats.banned_until > self.clock()

    def standing(self, peer_id: str) -> tuple[str, float, str] | None:
        """Why a peer is not asked now: ("banned", seconds left, reason) or ("backing off", seconds left,
        its last error); None when it is available."""
        stats = self.peers.get(peer_id)
        now = self.clock()
        if stats is None or max(stats.backoff_until, stats.banned_until) <= now:
            return None
        if stats.banned_until > now:
            return "banned", stats.banned_until - now, stats.ban_reason
        return "backing off", stats.backoff_until - now, stats.last_error

    def available(self, peer_id: str) -> bool:
        stats = self.peers.get(peer_id)
        return stats is None or max(stats.backoff_until, stats.banned_until) <= self.clock()

    def order(self, peer_ids: Iterable[str]) -> list[str]:
        """Peers not in backoff, best first: those whose last attempt did not fail, then by success
        rate, then latency, then the most recent success."""
        def key(peer_id: str) -> tuple[bool, float, float, float]:
            stats = self.peers.get(peer_id) or PeerStats()
            latency = stats.latency if stats.latency is not None else 0.05  # unknown: assume a LAN peer
            return (stats.consecutive_failures > 0, -round(stats.success_rate, 1), latency, -stats.last_success)

        return sorted((p for p in dict.fromkeys(peer_ids) if self.available(p)), key=key)
