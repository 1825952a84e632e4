"""Run the daemon: open the store, serve the app with uvicorn, close everything on the way out."""

import argparse
import logging

import uvicorn

from .app import CacheSettings, create_app
from .metrics import Metrics
from .nix.signing import SecretKey
from .store.local import LocalStore
from .store.substituter import Substituter

log = logging.getLogger(__name__)


async def serve(args: argparse.Namespace, key: SecretKey | None) -> None:
    host, port = args.listen
    async with LocalStore(args.store_root) as local:
        app = create_app(Substituter(local, key), CacheSettings(priority=args.priority), Metrics())
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=args.access_log,
            lifespan="off", server_header=False, proxy_headers=False, timeout_keep_alive=30,
            http="httptools",
        )
        log.info("serving store_root=%s listen=%s:%d key=%s", args.store_root, host, port, key and key.name)
        await uvicorn.Server(config).serve()
