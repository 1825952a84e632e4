"""Telling the tracker what this host can share: the set of announceable paths, as deltas.

The announcer watches the Nix database cheaply (two stats a second) and announces when it changed,
or sends a heartbeat; the tracker client turns a changed set into a delta.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from ..common.throttle import Throttle
from ..net.endpoint import EndpointAddress
from ..net.tracker_client import PeerAddresses, TrackerClient, TrackerError
from ..store.held import HeldPaths
from ..store.local import LocalStore
from ..telemetry.metrics import Metrics
from .derivations import realisation_key
from .policy import Policy
from .summaries import shareable_hashes

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, client: TrackerClient, local: LocalStore, policy: Policy, address: Callable[[], EndpointAddress],
                 name: str, metrics: Metrics, poll: float = 1.0, heartbeat: float = 60.0,
                 advised: dict[str, Throttle] | None = None, held: HeldPaths | None = None) -> None:
        self.held = held  # paths pulled through, held outside the store: announced like the store's
        self.advised = advised or {}  # throttles the tracker's advice applies to (those without a local setting)
        self.client = client
        self.local = local
        self.policy = policy
        self.address = address
        self.name = name
        self.metrics = metrics
        self.poll = poll
        self.heartbeat = heartbeat
        self.announced: int | None = None  # paths in the last acknowledged announce
        self.last_success = 0.0
        self.last_error: str | None = None  # why the last announce failed, until one succeeds

    async def run(self) -> None:
        generation, last = None, 0.0
        while True:
            current = (self.local.generation(), self.held.version if self.held else None)
            due = current != generation or time.monotonic() - last >= self.heartbeat
            if due and not self.client.in_backoff:  # a backed-off client would fail at once: one try a period
                try:
                    await self.announce()
                    generation, last = current, time.monotonic()
                except TrackerError as error:
                    self.last_error = str(error)
                    self.metrics.source_errors.labels("tracker").inc()
                    if error.lasting:  # the client logged it, once for its whole backoff
                        log.debug("announce refused error=%s", error)
                    else:
                        log.warning("announce failed error=%s", error)
                except Exception:  # a bug must be loud, and must not end announcing for good
                    log.exception("announce crashed")
            await asyncio.sleep(self.poll)

    async def announce(self) -> None:
        """The paths the policy shares (held ones too), and the realisations whose outputs it shares
        (under their keys)."""
        hashes = await shareable_hashes(self.local, self.policy, self.held)
        hashes += [realisation_key(id_) for id_, out, sigs in await self.local.realisations()
                   if self.policy.announceable(out, sigs)]
        address = self.address()
        await self.client.announce(hashes, PeerAddresses(address.endpoint_id, address.direct, address.relay_url,
                                                         incarnation=address.incarnation), self.name)
        self.announced, self.last_success, self.last_error = len(hashes), time.time(), None
        for name, throttle in self.advised.items():
            rate = self.client.advice.get(name, 0)  # no advice: unlimited, as without a tracker
            if rate != throttle.rate:
                if rate:
                    log.info("tracker advice applied %s=%d", name, rate)
                else:
                    log.info("tracker advice withdrawn %s, unlimited now", name)
                throttle.set_rate(rate)
