"""The other hosts as this one sees them: who may hold a path, how each has behaved, how to reach them.

One object shared by finding paths (remote.py) and moving their NARs (transfer.py), so both rank
candidates the same way and every failure counts against the same peer.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..common.throttle import Throttle
from ..net.endpoint import EndpointAddress, PeerEndpoint
from ..net.fast_path import FastPath
from ..telemetry.metrics import Metrics
from .candidates import Candidate, CandidateSource
from .reputation import Reputation

log = logging.getLogger(__name__)

_SOURCE_RANK = {"lan": 0, "static": 0, "tracker": 1}


class Peers:
    def __init__(self, endpoint: PeerEndpoint, sources: Sequence[CandidateSource], reputation: Reputation,
                 metrics: Metrics, downloads: Throttle | None = None, query_timeout: float = 5.0,
                 admits: Callable[[str], bool] = lambda peer_id: True, fast_path: FastPath | None = None) -> None:
        self.endpoint = endpoint
        self.fast_path = fast_path  # nearby peers' NAR bytes over HTTP; None: over iroh only
        self.admits = admits  # peers outside the fleet are neither answered nor asked
        self.sources = sources
        self.reputation = reputation
        self.metrics = metrics
        self.downloads = downloads or Throttle()  # the download cap, shared by every transfer
        self.query_timeout = query_timeout  # one peer's first answer, connecting included

    async def candidates(self, hash_part: str, fresh: bool = False, with_backoff: bool = False) -> list[Candidate]:
        """Every source's candidates: LAN peers before tracker peers (and a peer both know keeps its LAN
        addresses if the LAN source comes first); best reputation first within each; peers in backoff
        left out, or put last `with_backoff`; banned peers always left out."""
        by_peer = await self.named(hash_part, fresh)
        ordered = [by_peer[peer_id] for peer_id in self.reputation.order(by_peer)]
        if by_peer and not ordered and not fresh:  # a cached answer named only failed peers
            return await self.candidates(hash_part, fresh=True, with_backoff=with_backoff)
        ordered.sort(key=lambda c: _SOURCE_RANK.get(c.source, len(_SOURCE_RANK)))
        if with_backoff:
            ordered += [c for peer_id, c in by_peer.items()
                        if not self.reputation.available(peer_id) and not self.reputation.banned(peer_id)]
        return ordered

    def unanswered(self) -> list[str]:
        """The sources that cannot be asked now (a tracker down or hung): their "nobody" means "unsure"."""
        return [source.name for source in self.sources if not source.answering]

    async def named(self, hash_part: str, fresh: bool = False, everyone: bool = False) -> dict[str, Candidate]:
        """Every admitted peer (`everyone`: admitted or not) the sources name for the path, whatever its
        reputation, once each (LAN first)."""
        answers = await asyncio.gather(*(source.candidates(hash_part, fresh) for source in self.sources))
        by_peer: dict[str, Candidate] = {}
        for candidate in (c for answer in answers for c in answer):
            if candidate.peer_id != self.endpoint.peer_id and (everyone or self.admits(candidate.peer_id)):
                by_peer.setdefault(candidate.peer_id, candidate)
        return by_peer

    def restarted(self, address: EndpointAddress) -> None:
        """A source saw another process of a known peer: connections to the old one are dead (the
        endpoint finds and drops them), and the old one's failures do not keep the new one waiting."""
        peer = address.endpoint_id
        self.endpoint.check(peer)
        self.reputation.restarted(peer)
        log.info("peer restarted peer=%s incarnation=%s addresses=%s", peer[:10], address.incarnation,
                 ",".join(address.direct))

    def failed(self, peer: str, kind: str, result: str, error: str) -> None:
        self.reputation.failed(peer, error)
        self.metrics.peer_fetches.labels(kind, result).inc()
        log.info("peer failed peer=%s kind=%s result=%s error=%s", peer[:10], kind, result, error)
