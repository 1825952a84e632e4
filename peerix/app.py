"""The HTTP face of the daemon: the binary cache protocol Nix speaks, plus health and metrics.

Nix reads 404 as "not here" and most other errors as a broken cache, so every lookup that
cannot be answered becomes a fast 404 (or a 400 for input Nix itself would never send).
"""

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .metrics import Metrics
from .nix import nix32
from .nix.hash import SHA256_SIZE
from .nix.narinfo import NarInfo, PathInfo
from .nix.storepath import is_hash_part
from .store.substituter import Substituter, Unavailable

log = logging.getLogger(__name__)

NARINFO_TYPE = "text/x-nix-narinfo"
NAR_TYPE = "application/x-nix-nar"


@dataclass(frozen=True)
class CacheSettings:
    priority: int = 30
    want_mass_query: bool = True


def nar_url(info: PathInfo) -> str:
    """The NarHash names the NAR so a rebuilt path never aliases an old one; the hash part finds it."""
    return f"nar/{nix32.encode(info.nar_hash)}.nar?hash={info.store_path.hash_part}"


def create_app(substituter: Substituter, settings: CacheSettings, metrics: Metrics) -> ASGIApp:
    cache_info = (
        f"StoreDir: {substituter.local.store_dir}\n"
        f"WantMassQuery: {int(settings.want_mass_query)}\n"
        f"Priority: {settings.priority}\n"
    )

    async def nix_cache_info(request: Request) -> Response:
        return PlainTextResponse(cache_info, media_type="text/x-nix-cache-info")

    async def narinfo(request: Request) -> Response:
        hash_part = request.path_params["hash"]
        if not is_hash_part(hash_part):
            metrics.narinfo.labels("invalid").inc()
            return _error(400, f"invalid store path hash {hash_part[:64]!r}")
        info = await _lookup(hash_part)
        metrics.narinfo.labels("miss" if info is None else "hit").inc()
        if info is None:
            return _error(404, "path not found")
        text = NarInfo.uncompressed(info, nar_url(info)).to_text()
        return Response(text, media_type=NARINFO_TYPE)

    async def nar(request: Request) -> Response:
        encoded = request.path_params["narhash"]
        hash_part = request.query_params.get("hash", "")
        try:
            nar_hash = nix32.decode(encoded)
        except ValueError:
            nar_hash = b""
        if len(nar_hash) != SHA256_SIZE:
            return _error(400, f"invalid NAR hash {encoded[:64]!r}")
        if not is_hash_part(hash_part):
            return _error(404, "NAR URLs need ?hash=<store path hash>, as the narinfo gives them")
        info = await _lookup(hash_part)
        if info is None or info.nar_hash != nar_hash:
            return _error(404, "no such NAR: the path is gone or has other contents now")
        headers = {"content-length": str(info.nar_size)}
        if request.method == "HEAD":
            return Response(headers=headers, media_type=NAR_TYPE)
        return StreamingResponse(_logged(substituter.nar(info), info), headers=headers, media_type=NAR_TYPE)

    async def _lookup(hash_part: str) -> PathInfo | None:
        try:
            info = await substituter.path_info(hash_part)
        except Unavailable as error:
            log.error("lookup failed hash=%s error=%s", hash_part, error)
            metrics.store_errors.inc()
            return None
        return info

    async def _logged(chunks: AsyncIterator[bytes], info: PathInfo) -> AsyncIterator[bytes]:
        started, sent, outcome = time.monotonic(), 0, "aborted"
        try:
            async for chunk in chunks:
                yield chunk
                sent += len(chunk)
            outcome = "complete"
        except OSError as error:
            outcome = "failed"
            log.error("nar failed path=%s sent=%d error=%s", info.store_path, sent, error)
            raise
        finally:
            metrics.nar_transfers.labels(outcome).inc()
            seconds = time.monotonic() - started
            log.info(
                "nar %s path=%s bytes=%d seconds=%.3f mib_per_s=%.1f",
                outcome, info.store_path, sent, seconds, sent / (1 << 20) / max(seconds, 1e-6),
            )

    async def health(request: Request) -> Response:
        status, checks = "ok", {}
        try:
            checks["paths"] = await substituter.local.count()
            checks["database"] = "ok"
        except Exception as error:  # health must report any failure, not raise it
            status, checks["database"] = "error", str(error)
        body = {
            "status": status,
            "version": __version__,
            "store_root": str(substituter.local.root),
            "signing_key": substituter.key.name if substituter.key else None,
            **checks,
        }
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/nix-cache-info", nix_cache_info),
            Route("/{hash}.narinfo", narinfo),
            Route("/nar/{narhash}.nar", nar),
            Route("/health", health),
            Route("/metrics", prometheus),
        ]
    )
    return MetricsMiddleware(app, metrics)


def _error(status: int, reason: str) -> Response:
    return PlainTextResponse(reason + "\n", status_code=status)


class MetricsMiddleware:
    """Counts every response by route and status, its body bytes and its full duration."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = 0, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status or 500)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if sent:
                self.metrics.sent_bytes.labels(route).inc(sent)
