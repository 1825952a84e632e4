"""What peers know of the derivations they built: build logs (`/peerix/log/1`) and realisations of
content-addressed derivations (`/peerix/realisation/1`), asked of the peers that may have them,
bounded in size and time like narinfo.

A build log is asked of the peers that hold its derivation, which hosts announce like any path
they share. A realisation is keyed by the derivation's hash modulo, not by a store path, so hosts
announce each one under `realisation_key(id)`, a key in the space of store path hash parts that
the tracker indexes like a path. A peer's realisation counts only with a trusted signature: Nix
2.8 substitutes what it says without checking it.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import iroh

from ..net import wire
from ..net.endpoint import PeerUnreachable
from ..nix import nix32
from ..nix.realisation import Realisation, RealisationError
from ..nix.signing import trusted_sigs
from ..nix.storepath import StorePath
from ..store.local import MAX_LOG
from .candidates import Candidate
from .peers import Peers
from .policy import Policy
from .transfer import describe

log = logging.getLogger(__name__)

LOG_TIMEOUT = 30.0  # seconds a peer has to send a whole log once it answered
PARALLEL_QUERIES = 4
T = TypeVar("T")


def realisation_key(id_: str) -> str:
    """The 32 nix32 characters a realisation is announced and looked up under."""
    return nix32.encode(hashlib.sha256(b"peerix-realisation:" + id_.encode()).digest()[:20])


class PeerDerivations:
    def __init__(self, peers: Peers, policy: Policy) -> None:
        self.peers = peers
        self.policy = policy

    async def build_log(self, drv: StorePath) -> bytes | None:
        """The first build log a peer holding the derivation sends, or None."""
        return await self._first(drv.hash_part, lambda candidate: self._ask_log(candidate, drv))

    async def realisation(self, id_: str) -> Realisation | None:
        """The first realisation a peer sends that a trusted key signed, with only those signatures."""
        return await self._first(realisation_key(id_), lambda candidate: self._ask_realisation(candidate, id_))

    async def _first(self, key: str, ask: Callable[[Candidate], Awaitable[T | None]]) -> T | None:
        limit = asyncio.Semaphore(PARALLEL_QUERIES)

        async def bounded(candidate: Candidate) -> T | None:
            async with limit:
                return await ask(candidate)

        tasks = [asyncio.create_task(bounded(candidate)) for candidate in await self.peers.candidates(key)]
        try:
            for next_done in asyncio.as_completed(tasks):
                if (found := await next_done) is not None:
                    return found
            return None
        finally:
            for task in tasks:
                task.cancel()

    async def _ask_log(self, candidate: Candidate, drv: StorePath) -> bytes | None:
        peer, started = candidate.peer_id, time.monotonic()
        try:
            async with asyncio.timeout(self.peers.query_timeout):
                stream, header = await self.peers.endpoint.request(
                    candidate.address, wire.LOG_ALPN, wire.encode_frame({"drv": drv.basename}), wire.read_frame)
            if header.get("status") != "ok":
                self.peers.metrics.peer_fetches.labels("log", "not-found").inc()
                return None
            size = header.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_LOG:
                raise wire.WireError(f"a log of {str(size)[:20]} bytes (at most {MAX_LOG})")
            async with asyncio.timeout(LOG_TIMEOUT):
                text = await stream.recv().read_exact(size) if size else b""
        except (TimeoutError, PeerUnreachable, iroh.IrohError, wire.WireError) as error:
            self.peers.failed(peer, "log", "failed", describe(error))
            return None
        self.peers.reputation.succeeded(peer, time.monotonic() - started)
        self.peers.metrics.peer_fetches.labels("log", "ok").inc()
        log.info("fetched build log drv=%s peer=%s bytes=%d", drv, peer[:10], size)
        return text

    async def _ask_realisation(self, candidate: Candidate, id_: str) -> Realisation | None:
        peer, started = candidate.peer_id, time.monotonic()
        try:
            async with asyncio.timeout(self.peers.query_timeout):
                _, reply = await self.peers.endpoint.request(
                    candidate.address, wire.REALISATION_ALPN, wire.encode_frame({"id": id_}), wire.read_frame)
        except (TimeoutError, PeerUnreachable, iroh.IrohError, wire.WireError) as error:
            self.peers.failed(peer, "realisation", "unreachable", describe(error))
            return None
        if reply.get("status") != "ok":
            self.peers.metrics.peer_fetches.labels("realisation", "not-found").inc()
            return None
        try:
            found = Realisation.parse(str(reply.get("realisation")))
        except RealisationError as error:
            self.peers.failed(peer, "realisation", "failed", f"bad realisation: {error}")
            return None
        sigs = trusted_sigs(found, self.policy.trusted_keys)
        if found.id != id_ or not sigs:
            reason = f"answered with {found.id}" if found.id != id_ else "no signature by a trusted key"
            self.peers.metrics.verification_failures.labels("realisation").inc()
            self.peers.metrics.activity.count("verification_failures")
            log.warning("rejected realisation peer=%s id=%s reason=%s", peer[:10], id_, reason)
            self.peers.failed(peer, "realisation", "rejected", reason)
            return None
        self.peers.reputation.succeeded(peer, time.monotonic() - started)
        self.peers.metrics.peer_fetches.labels("realisation", "ok").inc()
        log.info("found realisation id=%s out=%s peer=%s", id_, found.out_path, peer[:10])
        return found.with_sigs(sigs)
