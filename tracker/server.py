"""Run the tracker: open the storage, serve the app under uvicorn beside the sweep."""

import asyncio
import logging
import time
from pathlib import Path

import uvicorn

from peerix.common.server import Server

from .app import Tracker, create_app
from .auth import Authenticator
from .config import Config
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
    try:
        metrics = Metrics(config.replica)
        auth = Authenticator(config.membership, config.allowlist, config.tokens, config.max_clock_skew, started_at)
        address_limits = RateLimiter(config.address_rate, config.address_burst)
        peer_limits = RateLimiter(config.peer_rate, config.peer_burst)
        lease_limits = RateLimiter(config.lease_rate, config.lease_burst)
        sweeper = Sweeper(storage, config.remove_after, config.sweep_interval, metrics,
                          prune=(address_limits.prune, peer_limits.prune, lease_limits.prune))
        app = create_app(Tracker(config, storage, auth, address_limits, peer_limits, metrics, sweeper, started_at,
                                 lease_limits))
        host, port = config.listen
        server = Server(uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=config.access_log, lifespan="off",
            server_header=False, proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=list(config.trusted_proxies) or None, timeout_keep_alive=30, http="httptools",
        ))
        if config.membership == "open" and not config.loopback_only:
            log.warning("membership is open on a public address: any key can announce; "
                        "use an allowlist or a network token for a fleet listen=%s:%d", host, port)
        counts = await storage.counts(started_at - config.offline_after)
        log.info("serving db=%s replica=%s listen=%s:%d membership=%s peers=%d paths=%d", storage.name,
                 config.replica, host, port, config.membership, counts.peers_online + counts.peers_offline,
                 counts.paths)
        sweeper.start()
        census = asyncio.create_task(_census(storage, metrics, config.offline_after))
        try:
            await server.serve()
        finally:
            census.cancel()
            await asyncio.gather(census, return_exceptions=True)
            await sweeper.stop()
    finally:
        await storage.close()
