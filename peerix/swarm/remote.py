"""Paths from the peer network: find who has a path, take the first narinfo that passes policy;
its NAR then comes through a transfer (transfer.py) from the peers that have it. A path no peer
has but the upstream cache does is pulled through (pull_through.py), when that is on.

Only "no peer has it" is remembered (for miss_ttl): when a peer that may have the path does not
answer, or is left alone after failures, or a source that names holders (the tracker) cannot be
asked, the lookup raises HoldersFailed and the next one asks again, so a holder that was killed and
restarted is found as soon as it is back, and a NAR asked for meanwhile is a 503 that Nix retries."""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import iroh

from ..common.units import duration
from ..net import wire
from ..net.endpoint import PeerUnreachable
from ..nix.narinfo import NarInfo, NarInfoError, PathInfo
from ..nix.realisation import Realisation
from ..nix.storepath import StorePath
from ..store.substituter import HoldersFailed, NarUnavailable
from .candidates import Candidate
from .derivations import PeerDerivations
from .peers import Peers
from .policy import Policy, Verdict
from .prefetch import accept_prefetched
from .pull_through import PullThrough
from .transfer import NarFetchError, NarTransfer, TransferSettings, describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemotePath:
    info: PathInfo  # as accepted: only the signatures we trust
    verdict: Verdict
    peers: tuple[Candidate, ...]  # who to ask for the NAR, the one that answered first
    upstream: NarInfo | None = None  # no peer had it: pulled through from the upstream, as it published it
    prefetched: bool = False  # came with the answer for a path that references it (prefetch.py)


@dataclass(frozen=True)
class RemoteSettings:
    parallel_queries: int = 4
    hit_ttl: float = 600.0
    miss_ttl: float = 10.0
    prefetch_ttl: float = 30.0  # narinfos a peer added to an answer are kept this long (0: not asked for)
    transfer: TransferSettings = TransferSettings()


@dataclass(frozen=True)
class Answer:
    candidate: Candidate
    result: str  # ok, not-found, unreachable, failed (a broken answer), rejected (by policy); not asked:
    detail: str  # backing-off, banned
    latency: float
    info: PathInfo | None = None  # as accepted: only the signatures we trust
    verdict: Verdict | None = None
    prefetched: tuple[tuple[PathInfo, Verdict], ...] = ()  # references' narinfos the peer added, as accepted


class _Expiring(OrderedDict):
    """An LRU of values that expire."""

    def __init__(self, entries: int) -> None:
        super().__init__()
        self.entries = entries

    def get_fresh(self, key: str) -> object | None:
        hit = self.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def get_any(self, key: str) -> object | None:
        """The value, expired or not."""
        hit = self.get(key)
        return None if hit is None else hit[1]

    def put(self, key: str, value: object, ttl: float) -> None:
        self[key] = (time.monotonic() + ttl, value)
        self.move_to_end(key)
        if len(self) > self.entries:
            self.popitem(last=False)


class RemoteStore:
    def __init__(self, peers: Peers, policy: Policy, settings: RemoteSettings = RemoteSettings(),
                 pull: PullThrough | None = None) -> None:
        self.peers = peers
        self.policy = policy
        self.pull = pull
        self.metrics = peers.metrics
        self.settings = settings
        self._paths = _Expiring(16384)
        self.derivations = PeerDerivations(peers, policy)

    async def find(self, hash_part: str, again: bool = False) -> PathInfo | None:
        found = await self.path_info(hash_part, again)
        return found.info if found else None

    def known(self, hash_part: str) -> RemotePath | None:
        """A path found in the network recently (the NAR request follows the narinfo request)."""
        found = self._paths.get_fresh(hash_part)
        return found if isinstance(found, RemotePath) else None

    async def path_info(self, hash_part: str, again: bool = False) -> RemotePath | None:
        """The path as found in the network, or None when no peer has it; raises HoldersFailed when
        a peer that may have it did not answer or is backing off (peers in backoff are not asked, unless
        all are and some failed only once). `again`: neither a remembered miss nor the sources' cached
        answers answer: a NAR request comes with a narinfo Nix holds, perhaps from a holder that
        appeared since."""
        cached = self._paths.get_fresh(hash_part)
        if cached is not None and not (again and cached is False):
            self.metrics.remote_lookups.labels("hit" if isinstance(cached, RemotePath) else "cached-miss").inc()
            if isinstance(cached, RemotePath) and cached.prefetched:
                self.metrics.prefetched_narinfos.labels("used").inc()
            return cached if isinstance(cached, RemotePath) else None
        candidates = await self.peers.candidates(hash_part, fresh=again, with_backoff=True)
        last = self._paths.get_any(hash_part)
        if not candidates and isinstance(last, RemotePath) and self.peers.unanswered():
            # A source cannot be asked now: those who had it when it was last found (a prefetched
            # narinfo's path was never looked up at the tracker, so it has no answer to fall back on).
            candidates = list(last.peers)
        available = ([c for c in candidates if self.peers.reputation.available(c.peer_id)]
                     or [c for c in candidates if self.peers.reputation.worth_a_retry(c.peer_id)])
        found, answered = await self._likely_first(hash_part, available)
        if found is None and not (answered and len(available) == len(candidates)):
            self.metrics.remote_lookups.labels("holders-failed").inc()
            raise HoldersFailed(f"the {len(candidates)} peers that may have {hash_part} did not answer "
                                f"({len(candidates) - len(available)} backing off)")
        if found is None and self.pull is not None and (upstream := await self.pull.find(hash_part)) is not None:
            found = RemotePath(upstream, Verdict(True, f"signed by {_signers(self.policy, upstream)}; pulled through "
                                                       f"from {self.pull.upstream.url}"), (), upstream)
        if found is None and (unanswered := self.peers.unanswered()):
            self.metrics.remote_lookups.labels("source-failed").inc()
            raise HoldersFailed(f"no peer known to have {hash_part}, and the {', '.join(unanswered)} cannot be "
                                "asked now")
        self._paths.put(hash_part, found or False, self.settings.hit_ttl if found else self.settings.miss_ttl)
        self.metrics.remote_lookups.labels(("upstream" if found.upstream else "hit") if found else "miss").inc()
        return found

    async def _likely_first(self, hash_part: str, candidates: list[Candidate]) -> tuple[RemotePath | None, bool]:
        """As `_first_accepted`, asking the peers whose store summary surely lacks the path only when
        none of the others had it (a summary may be older than the path)."""
        likely = [c for c in candidates if not c.unlikely]
        unlikely = [c for c in candidates if c.unlikely]
        found, answered = await self._first_accepted(hash_part, likely) if likely else (None, True)
        if found is not None:
            self.metrics.summary_questions.labels("saved").inc(len(unlikely))
        elif unlikely:
            found, rest_answered = await self._first_accepted(hash_part, unlikely)
            answered = answered and rest_answered
            self.metrics.summary_questions.labels("claimed-too-little" if found else "asked-anyway").inc(len(unlikely))
        return found, answered

    async def _first_accepted(self, hash_part: str, candidates: list[Candidate]) -> tuple[RemotePath | None, bool]:
        """The first accepted answer; when there is none, whether every peer answered (rather than
        some being unreachable)."""
        limit = asyncio.Semaphore(self.settings.parallel_queries)

        async def ask(candidate: Candidate) -> RemotePath | bool:
            async with limit:
                return await self._query(hash_part, candidate)

        tasks = [asyncio.create_task(ask(candidate)) for candidate in candidates]
        answered = True
        try:
            for next_done in asyncio.as_completed(tasks):
                found = await next_done
                if isinstance(found, RemotePath):
                    peers = (found.peers[0], *(c for c in candidates if c != found.peers[0]))
                    return RemotePath(found.info, found.verdict, peers), True
                answered = answered and found
            return None, answered
        finally:
            for task in tasks:
                task.cancel()

    async def _ask(self, hash_part: str, candidate: Candidate, prefetch: bool = False) -> Answer:
        """One peer's narinfo for the path, judged by policy, with the narinfos of its references that
        the peer added when `prefetch`; no bookkeeping."""
        started = time.monotonic()
        self.metrics.peer_round_trips.labels("narinfo").inc()
        request = {"hash": hash_part} | ({"references": True} if prefetch else {})
        try:
            async with asyncio.timeout(self.peers.query_timeout):
                _, reply = await self.peers.endpoint.request(candidate.address, wire.NARINFO_ALPN,
                                                             wire.encode_frame(request), wire.read_frame)
        except (TimeoutError, PeerUnreachable, iroh.IrohError, wire.WireError) as error:
            return Answer(candidate, "unreachable", describe(error), time.monotonic() - started)
        latency = time.monotonic() - started
        if reply.get("status") != "ok":
            return Answer(candidate, "not-found", "the peer does not have it", latency)
        try:
            info = NarInfo.parse(str(reply.get("narinfo")))
        except NarInfoError as error:
            return Answer(candidate, "failed", f"bad narinfo: {error}", latency)
        if info.store_path.hash_part != hash_part:
            return Answer(candidate, "rejected", f"answered with {info.store_path}", latency)
        verdict, accepted = await self.policy.accept_from_peer(info)
        if not verdict.ok:
            return Answer(candidate, "rejected", verdict.reason, latency, accepted, verdict)
        prefetched, refused = accept_prefetched(self.policy, info, reply.get("references"))
        self.metrics.prefetched_narinfos.labels("accepted").inc(len(prefetched))
        self.metrics.prefetched_narinfos.labels("refused").inc(refused)
        return Answer(candidate, "ok", verdict.reason, latency, accepted, verdict, tuple(prefetched))

    async def _query(self, hash_part: str, candidate: Candidate) -> RemotePath | bool:
        """The path as this peer offers it, else whether the peer answered at all."""
        answer = await self._ask(hash_part, candidate, prefetch=self.settings.prefetch_ttl > 0)
        peer = candidate.peer_id
        if answer.result == "not-found":
            self.peers.reputation.succeeded(peer, answer.latency)  # it answered; the tracker's list was stale
            self.metrics.peer_fetches.labels("narinfo", "not-found").inc()
            return True
        if answer.result != "ok":
            if answer.verdict is not None:
                self.metrics.verification_failures.labels("narinfo").inc()
                self.metrics.activity.count("verification_failures")
                log.warning("rejected narinfo peer=%s path=%s reason=%s", peer[:10], hash_part, answer.detail)
            self.peers.failed(peer, "narinfo", answer.result, answer.detail)
            return answer.result != "unreachable"
        assert answer.info is not None and answer.verdict is not None
        self.peers.reputation.succeeded(peer, answer.latency)
        self.metrics.peer_fetches.labels("narinfo", "ok").inc()
        log.info("found path=%s peer=%s source=%s seconds=%.3f verdict=%r prefetched=%d", answer.info.store_path,
                 peer[:10], candidate.source, answer.latency, answer.detail, len(answer.prefetched))
        for info, verdict in answer.prefetched:
            if self.known(info.store_path.hash_part) is None:
                self._paths.put(info.store_path.hash_part, RemotePath(info, verdict, (candidate,), prefetched=True),
                                self.settings.prefetch_ttl)
        return RemotePath(answer.info, answer.verdict, (candidate,))

    async def explain(self, hash_part: str) -> list[Answer]:
        """What every candidate says about the path and what policy makes of it, for `peerix why`:
        nothing is cached and no reputation changes. Peers in backoff or banned are not asked, as Nix's
        request would not ask them; their answer says why, and for how long. Peers outside the fleet are
        not asked either."""
        everyone = await self.peers.named(hash_part, fresh=True, everyone=True)
        named = {peer_id: c for peer_id, c in everyone.items() if self.peers.admits(peer_id)}
        reputation = self.peers.reputation
        answers = list(await asyncio.gather(*(self._ask(hash_part, named[p]) for p in reputation.order(named))))
        answers += [Answer(c, "not-admitted", "not in this host's fleet (peers = fleet): neither asked nor answered",
                           0.0) for peer_id, c in everyone.items() if peer_id not in named]
        for peer_id, candidate in named.items():
            if standing := reputation.standing(peer_id):
                state, seconds, reason = standing
                answers.append(Answer(candidate, state.replace(" ", "-"),
                                      f"{reason or 'failed'}; not asked for another {duration(seconds)}", 0.0))
        return answers

    async def open_nar(self, info: PathInfo) -> AsyncIterator[bytes]:
        """The NAR from the peers that answered the narinfo, then whoever the sources name now,
        verified on the way, or pulled through from the upstream when no peer held it. Raises
        NarUnavailable (HoldersFailed when its holders failed) when no peer starts, before a single
        byte has been promised to anyone."""
        path = await self._path(info)
        if path.upstream is not None and self.pull is not None:
            return self.pull.open(path.upstream)
        try:
            return await self._transfer(path).start()
        except NarUnavailable:
            self.forget(info.store_path.hash_part)
            raise

    async def open_range(self, info: PathInfo, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the NAR from the same peers, one after another (unverified: a part
        of a NAR has no hash to check); raises as `open_nar` does."""
        try:
            return await self._transfer(await self._path(info)).start_range(start, end)
        except NarUnavailable:
            self.forget(info.store_path.hash_part)
            raise

    async def _path(self, info: PathInfo) -> RemotePath:
        # Nix keeps narinfo for a long time, so the NAR may be asked for long after the narinfo.
        path = self.known(info.store_path.hash_part) or await self.path_info(info.store_path.hash_part)
        if path is None or path.info.nar_hash != info.nar_hash:
            raise NarFetchError(f"{info.store_path} is neither local nor found in the network any more")
        return path

    def _transfer(self, path: RemotePath) -> NarTransfer:
        hash_part = path.info.store_path.hash_part
        return NarTransfer(self.peers, path.info, path.peers, self.settings.transfer,
                           on_mismatch=lambda: self.forget(hash_part))

    async def build_log(self, drv: StorePath) -> bytes | None:
        return await self.derivations.build_log(drv)

    async def realisation(self, id_: str) -> Realisation | None:
        return await self.derivations.realisation(id_)

    def forget(self, hash_part: str) -> None:
        """Look the path up again next time: its peers failed."""
        self._paths.pop(hash_part, None)


def _signers(policy: Policy, info: PathInfo) -> str:
    return ", ".join(sig.partition(":")[0] for sig in policy.trusted_sigs(info))
