"""Run the tracker: open the storage and the audit trail, serve the app under uvicorn beside the sweep.

SIGHUP reads the allowlist and token files again: the trail records what changed, and peers taken
off the allowlist are removed, so lookups and member lists stop naming them at once.
"""

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import uvicorn

from peerix.common.server import Server

from .app import Tracker, create_app
from .audit import TRACKER, AuditTrail
from .auth import Authenticator
from .config import Config, ConfigError, reread_members
from .metrics import Metrics
from .postgres import PostgresStorage
from .ratelimit import RateLimiter
from .sqlite import SqliteStorage
from .storage import DatabaseError, Storage, is_postgres
from .sweep import Sweeper

log = logging.getLogger(__name__)


def open_storage(location: Path | str, password: str | None = None) -> Storage:
    """The storage `--db` names: a PostgreSQL URL, else an SQLite file (not opened yet)."""
    if isinstance(location, str) and is_postgres(location):
        return PostgresStorage(location, password)
    return SqliteStorage(Path(location))


CENSUS_INTERVAL = 15.0  # seconds between counts of the fleet for the chart of peers online


async def _census(storage: Storage, metrics: Metrics, offline_after: float) -> None:
    """Count the fleet now and then, so the chart of peers online has a point every minute."""
    while True:
        now = time.time()
        try:
            metrics.counted(await storage.counts(now - offline_after), now)
        except DatabaseError as error:
            log.debug("census failed error=%s", error)
        await asyncio.sleep(CENSUS_INTERVAL)


async def serve(config: Config) -> None:
    started_at = time.time()
    storage = open_storage(config.db, config.db_password)
    await storage.open()
    metrics = Metrics(config.replica)
    trail = AuditTrail(config.audit_file, config.audit_max_size, journal=bool(os.environ.get("JOURNAL_STREAM")),
                       on_suppressed=metrics.audit_suppressed.inc)
    try:
        trail.open()
        trail.membership(config.membership, config.allowlist, config.tokens, actor="admin")
        auth = Authenticator(config.membership, config.allowlist, config.tokens, config.max_clock_skew, started_at)
        address_limits = RateLimiter(config.address_rate, config.address_burst)
        peer_limits = RateLimiter(config.peer_rate, config.peer_burst)
        lease_limits = RateLimiter(config.lease_rate, config.lease_burst)
        sweeper = Sweeper(storage, config.remove_after, config.sweep_interval, metrics,
                          prune=(address_limits.prune, peer_limits.prune, lease_limits.prune, trail.prune), trail=trail)
        app = create_app(Tracker(config, storage, auth, address_limits, peer_limits, metrics, sweeper, started_at,
                                 lease_limits, trail))
        host, port = config.listen
        server = Server(uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=config.access_log, lifespan="off",
            server_header=False, proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=list(config.trusted_proxies) or None, timeout_keep_alive=30, http="httptools",
            ssl_certfile=config.tls_cert and str(config.tls_cert), ssl_keyfile=config.tls_key and str(config.tls_key),
        ))
        if config.membership == "open" and not config.loopback_only:
            log.warning("membership is open on a public address: any key can announce; "
                        "use an allowlist or a network token for a fleet listen=%s:%d", host, port)
        counts = await storage.counts(started_at - config.offline_after)
        if config.audit_file is None:
            log.warning("no audit file: give audit_file (the audit trail goes to stdout under systemd only)")
        log.info("serving db=%s replica=%s listen=%s:%d tls=%s membership=%s peers=%d paths=%d audit=%s",
                 storage.name, config.replica, host, port, "yes" if config.tls_cert else "no", config.membership,
                 counts.peers_online + counts.peers_offline, counts.paths, config.audit_file)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task] = set()

        def on_hangup() -> None:
            task = asyncio.create_task(reload_members(config, auth, storage, trail))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        sweeper.start()
        census = asyncio.create_task(_census(storage, metrics, config.offline_after))
        try:
            await server.serve()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            census.cancel()
            await asyncio.gather(census, return_exceptions=True)
            await sweeper.stop()
    finally:
        trail.close()
        await storage.close()


async def reload_members(config: Config, auth: Authenticator, storage: Storage, trail: AuditTrail) -> None:
    """Read the allowlist and token files again; record the changes; remove the peers no longer listed."""
    try:
        allowlist, tokens = reread_members(config)
    except ConfigError as error:
        log.error("reload refused, membership unchanged error=%s", error)
        return
    trail.membership(config.membership, allowlist, tokens, actor="admin")
    auth.update(allowlist, tokens)
    log.info("membership reloaded membership=%s allowlist=%d tokens=%d", config.membership, len(allowlist),
             len(tokens))
    if config.membership != "allowlist":
        return
    try:
        for peer in await storage.peers():
            if peer.peer_id not in allowlist and await storage.remove(peer.key) is not None:
                trail.record(TRACKER, "left", peer=peer.peer_id, name=peer.name, reason="not on the allowlist",
                             paths=peer.paths)
    except Exception as error:  # the next reload, or the sweep, tries again; the log says it
        log.error("removing peers taken off the allowlist failed error=%s", error)
