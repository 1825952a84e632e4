"""Run the tracker: open the database, load the peers, serve the app under uvicorn beside the sweep."""

import logging
import time

import uvicorn

from peerix.common.server import Server

from .app import Tracker, create_app
from .auth import Authenticator
from .config import Config
from .db import Database
from .metrics import Metrics
from .ratelimit import RateLimiter
from .registry import Registry
from .sweep import Sweeper

log = logging.getLogger(__name__)


async def serve(config: Config) -> None:
    started_at = time.time()
    db = Database(config.db)
    await db.open()
    try:
        registry = Registry(db, config.offline_after)
        await registry.load()
        metrics = Metrics()
        auth = Authenticator(config.membership, config.allowlist, config.tokens, config.max_clock_skew, started_at)
        address_limits = RateLimiter(config.address_rate, config.address_burst)
        peer_limits = RateLimiter(config.peer_rate, config.peer_burst)
        sweeper = Sweeper(registry, config.remove_after, config.sweep_interval, metrics,
                          prune=(auth.prune, address_limits.prune, peer_limits.prune))
        app = create_app(Tracker(config, registry, auth, address_limits, peer_limits, metrics, sweeper, started_at))
        host, port = config.listen
        server = Server(uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=config.access_log, lifespan="off",
            server_header=False, proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=list(config.trusted_proxies) or None, timeout_keep_alive=30, http="httptools",
        ))
        if config.membership == "open" and not config.loopback_only:
            log.warning("membership is open on a public address: any key can announce; "
                        "use an allowlist or a network token for a fleet listen=%s:%d", host, port)
        log.info("serving db=%s listen=%s:%d membership=%s peers=%d paths=%d", config.db, host, port,
                 config.membership, len(registry.peers()), db.path_count)
        sweeper.start()
        try:
            await server.serve()
        finally:
            await sweeper.stop()
    finally:
        await db.close()
