"""Run the daemon: open the store, serve the app with uvicorn, close everything on the way out."""

import argparse
import logging

import uvicorn

from .app import CacheSettings, create_app
from .metrics import Metrics
from .nix.signing import SecretKey
from .store.local import LocalStore
from .store.narcache import NarCache
from .store.substituter import Substituter
from .zerocopy import ZeroCopyHttpToolsProtocol

log = logging.getLogger(__name__)


async def serve(args: argparse.Namespace, key: SecretKey | None) -> None:
    host, port = args.listen
    async with LocalStore(args.store_root) as local:
        nar_cache = NarCache(args.state_dir / "nar-cache", args.nar_cache_size) if args.nar_cache_size else None
        substituter = Substituter(local, key, nar_cache)
        app = create_app(substituter, CacheSettings(priority=args.priority), Metrics())
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=args.access_log,
            lifespan="off", server_header=False, proxy_headers=False, timeout_keep_alive=30,
            http=ZeroCopyHttpToolsProtocol,
        )
        log.info("serving store_root=%s listen=%s:%d key=%s", args.store_root, host, port, key and key.name)
        try:
            await uvicorn.Server(config).serve()
        finally:
            substituter.close()
