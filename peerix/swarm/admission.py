"""Who this host answers over the peer protocols: anyone (`any`), or its fleet (`fleet`).

The fleet is the peers the tracker lists under closed membership (allowlist or token), the static
peers, and LAN peers whose packets prove the fleet token. `guard` puts the check in front of every
peer protocol at once, so a protocol added later is covered too. The tracker's member list is
fetched every `fleet_sync` in the background and kept on disk across restarts, so a member is
answered from memory, and a peer the tracker removed is refused within one sync period. A peer not
on the list may have joined since the last fetch: its request waits (at most RECHECK_WAIT) on a
fresh fetch, so a new member is answered at once rather than after a sync period. Strangers cannot
turn this into load on the tracker: one fetch serves every waiter, a fetch starts no sooner than
RECHECK_EVERY after the last, and only what changed crosses the network. A refused peer reads the
request it sent and gets what an unknown path gets, `not-found`: a stranger learns nothing, not
even that it was refused. Refusals are counted.
"""

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import iroh

from ..net import wire
from ..net.endpoint import StreamHandler
from ..net.lan import LanDiscovery
from ..net.tracker_client import TrackerClient, TrackerError
from ..telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CLOSED = ("allowlist", "token")
_LOG_EVERY = 60.0  # seconds between log lines about one refused peer
RECHECK_EVERY = 1.0  # seconds: the least time between fetches of the member list on behalf of unknown peers
RECHECK_WAIT = 2.0  # seconds an unknown peer's request waits on that fetch


class Admission:
    def __init__(self, setting: str | None, metrics: Metrics, *, fleet_token: bool = False,
                 tracker_token: bool = False, lan: LanDiscovery | None = None, state_file: Path | None = None,
                 timeout: float = 10.0) -> None:
        self.setting = setting  # "any", "fleet", or None: decided by the tokens and the tracker's membership
        self.metrics = metrics
        self.fleet_token = fleet_token
        self.tracker_token = tracker_token  # a tracker that wants a token has closed membership
        self.lan = lan
        self.state_file = state_file
        self.timeout = timeout  # to read a refused peer's request and answer it
        self.membership: str | None = None  # the tracker's, once it said (or as it last said, from disk)
        self.members: frozenset[str] = frozenset()
        self.version: str | None = None
        self.synced_at: float | None = None
        self._logged: dict[str, float] = {}
        self._tracker: TrackerClient | None = None  # set by `sync`
        self._fetch: asyncio.Task | None = None
        self._fetched_at = -RECHECK_EVERY
        self._load()

    @property
    def mode(self) -> str:
        if self.setting is not None:
            return self.setting
        closed = self.tracker_token or self.membership in CLOSED
        return "fleet" if closed or self.fleet_token else "any"

    def admitted_by(self, peer_id: str) -> str | None:
        """Why the peer is answered ("any", "tracker", "static", "fleet token"), or None when it is not."""
        if self.mode == "any":
            return "any"
        if peer_id in self.members:
            return "tracker"
        lan_peer = self.lan.peers.get(peer_id) if self.lan is not None else None
        if lan_peer is not None:
            if lan_peer.source == "static":
                return "static"
            if self.fleet_token:  # without the token's proof its packets were dropped
                return "fleet token"
        return None

    def admits(self, peer_id: str) -> bool:
        return self.admitted_by(peer_id) is not None

    def status(self) -> dict:
        """For /health, `peerix why` and the dashboard."""
        return {"mode": self.mode, "setting": self.setting or "auto", "tracker_membership": self.membership,
                "tracker_members": len(self.members), "fleet_token": self.fleet_token,
                "synced_at": self.synced_at}

    # The guard in front of every peer protocol

    def guard(self, handlers: Mapping[bytes, StreamHandler]) -> dict[bytes, StreamHandler]:
        return {alpn: self._guarded(alpn, handler) for alpn, handler in handlers.items()}

    def _guarded(self, alpn: bytes, handler: StreamHandler) -> StreamHandler:
        refusals = self.metrics.peers_refused.labels(alpn.decode(errors="replace"))

        async def admitted(peer_id: str, stream: iroh.BiStream) -> None:
            if self.admits(peer_id) or await self._admitted_after_fetch(peer_id):
                return await handler(peer_id, stream)
            refusals.inc()
            self.metrics.activity.count("peers_refused")
            now = time.monotonic()
            if now - self._logged.get(peer_id, -_LOG_EVERY) >= _LOG_EVERY:
                if len(self._logged) > 4096:
                    self._logged.clear()
                self._logged[peer_id] = now
                log.info("refused peer=%s alpn=%s reason=not in the fleet (peers = fleet)", peer_id[:10],
                         alpn.decode(errors="replace"))
            await self._not_found(stream)
        return admitted

    async def _not_found(self, stream: iroh.BiStream) -> None:
        """What an unknown path gets: the request read, then `not-found`."""
        async with asyncio.timeout(self.timeout):
            await wire.read_frame(stream.recv())
            send = stream.send()
            await send.write_all(wire.encode_frame({"status": "not-found"}))
            await send.finish()
            await send.stopped()

    # The tracker's member list

    def update(self, membership: str, members: frozenset[str], version: str | None) -> None:
        changed = (membership, members) != (self.membership, self.members)
        if changed:
            gone = len(self.members - members)
            log.info("fleet members membership=%s members=%d added=%d removed=%d", membership, len(members),
                     len(members - self.members), gone)
        self.membership, self.members, self.version = membership, members, version
        self.synced_at = time.time()
        if changed:
            self._save()

    async def sync(self, client: TrackerClient, interval: float) -> None:
        """Fetch the tracker's member list every `interval` (only what changed crosses the network)."""
        self._tracker = client
        warned = False
        try:
            while True:
                await self._fetched()
                if not warned and self.membership in CLOSED:
                    warned = True
                    client.warn_plain_http()
                await asyncio.sleep(interval)
        finally:
            if self._fetch is not None:
                self._fetch.cancel()

    def _fetched(self, delay: float = 0.0) -> asyncio.Future:
        """The fetch under way, or a new one after `delay`: whoever asks meanwhile waits on the same answer."""
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.create_task(self._fetch_members(delay))
        return asyncio.shield(self._fetch)

    async def _fetch_members(self, delay: float) -> None:
        assert self._tracker is not None
        await asyncio.sleep(delay)
        self._fetched_at = time.monotonic()
        try:
            answer = await self._tracker.members(self.version)
            self.update(answer.membership, answer.members if answer.members is not None else self.members,
                        answer.version)
        except TrackerError as error:
            log.debug("member list not fetched error=%s", error)

    async def _admitted_after_fetch(self, peer_id: str) -> bool:
        """Whether a peer not on the member list is on it once the list is fetched again (at once, or
        RECHECK_EVERY after the last fetch)."""
        if self._tracker is None or not (self.tracker_token or self.membership in CLOSED):
            return False
        delay = max(0.0, self._fetched_at + RECHECK_EVERY - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fetched(delay), RECHECK_WAIT)
        return self.admits(peer_id)

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text())
            self.membership, self.members = str(data["membership"]), frozenset(map(str, data["members"]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring unusable member list path=%s error=%s", self.state_file, error)

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = json.dumps({"membership": self.membership, "members": sorted(self.members)})
        temporary = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):  # the cache on disk only spares a restart the wait for the tracker
            temporary.write_text(data)
            os.replace(temporary, self.state_file)
