"""The HTTP face of the daemon: the binary cache protocol Nix speaks, plus health and metrics.

Nix reads 404 as "not here" and most other errors as a broken cache, so every lookup that
cannot be answered becomes a fast 404 (or a 400 for input Nix itself would never send). The one
exception: a NAR whose holders failed (killed, restarting) is a 503 with Retry-After, which Nix
retries (five tries over about five seconds) instead of giving the path up.
"""

import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..common import web
from ..common.asgi import MetricsMiddleware, Whole, plain
from ..common.throttle import Throttle
from ..nix import nix32
from ..nix.hash import SHA256_SIZE
from ..nix.nar import Segment
from ..nix.narinfo import PathInfo
from ..nix.realisation import BuildTraceEntry, Realisation, is_id, is_output_name
from ..nix.storepath import StorePath, is_hash_part
from ..store.narcache import NarCache
from ..store.substituter import HoldersFailed, NarUnavailable, Substituter, Unavailable, narinfo_text
from ..swarm.explain import explain
from ..swarm.policy import Policy
from ..telemetry.activity import Live, fetching
from ..telemetry.metrics import Metrics
from .access import LOOPBACK, ClientAccess, parse_networks
from .dashboard import render as render_dashboard
from .fast_path import SCOPE_KEY as FAST_PATH
from .nar_response import NAR_TYPE, NarResponse
from .ranges import RangeError, Unsatisfiable, content_range, parse_range

log = logging.getLogger(__name__)

NARINFO_TYPE = b"text/x-nix-narinfo; charset=utf-8"  # the charset as Starlette's Response gave it
RETRY_AFTER = 1  # seconds: a killed holder is back, or another found, within a few of Nix's retries
TRANSFERS_PAGE, MAX_TRANSFERS_PAGE = 50, 1000

# The routes Nix asks most, as Starlette would route them: `/<hash>.narinfo`, `/nar/<narhash>.nar`, under /store/ too
_HOT_PATH = re.compile(r"(?P<store>/store)?/(?:(?P<hash>[^/]+)\.narinfo|nar/(?P<narhash>[^/]+)\.nar)")

Handler = Callable[[Request], Awaitable[ASGIApp]]
Lookup = Callable[[str], Awaitable[PathInfo | None]]


@dataclass(frozen=True)
class CacheSettings:
    priority: int = 30
    want_mass_query: bool = True


def create_app(substituter: Substituter, settings: CacheSettings, metrics: Metrics,
               network: Callable[[], dict[str, Any]] | None = None,
               peers: Callable[[], list[dict[str, Any]]] | None = None,
               access: ClientAccess | None = None, policy: Policy | None = None,
               uploads: Throttle | None = None) -> ASGIApp:
    """The HTTP app; `network` reports the peer network's state for /health, `peers` who we know.

    The substituter and API routes answer `access`'s clients only (loopback by default); with a
    `policy`, `/store/` serves the local store to anyone, as far as the serving policy allows.
    """
    access = access or ClientAccess(parse_networks(LOOPBACK))
    if substituter.nar_cache:
        _watch_nar_cache(metrics, substituter.nar_cache)
    cache_info = (
        f"StoreDir: {substituter.local.store_dir}\n"
        f"WantMassQuery: {int(settings.want_mass_query)}\n"
        f"Priority: {settings.priority}\n"
    )

    narinfo_hits, narinfo_misses, narinfo_invalid = (metrics.narinfo.labels(r) for r in ("hit", "miss", "invalid"))

    def local_clients(handler: Handler) -> Handler:
        """Refuse clients outside the trusted networks with a 403 that says why."""
        @functools.wraps(handler)
        async def guarded(request: Request) -> ASGIApp:
            client = request.client.host if request.client else None
            if not access.allowed(client):
                metrics.refused.labels("client").inc()
                log.info("refused client=%s path=%s reason=not in trusted networks", client, request.url.path)
                return plain(403, f"{client} may not use this cache: it fetches from the peer network, so it "
                                  "answers trusted networks only (trusted_networks); /store/ serves anyone")
            return await handler(request)
        return guarded

    async def nix_cache_info(request: Request) -> Response:
        return PlainTextResponse(cache_info, media_type="text/x-nix-cache-info")

    @local_clients
    async def narinfo(request: Request) -> ASGIApp:
        return await _narinfo(request, substituter.lookup)

    async def store_narinfo(request: Request) -> ASGIApp:
        return await _narinfo(request, _servable)

    async def _narinfo(request: Request, lookup: Lookup) -> ASGIApp:
        hash_part = request.path_params["hash"]
        if not is_hash_part(hash_part):
            narinfo_invalid.inc()
            return plain(400, f"invalid store path hash {hash_part[:64]!r}")
        try:
            info = await _lookup(lookup, hash_part)
        except _Refused as refused:
            return plain(403, f"not shared: {refused}")
        except HoldersFailed as error:  # a 5xx would make Nix give up on the cache: "not here (now)"
            log.info("narinfo unavailable hash=%s error=%s", hash_part, error)
            info = None
        return _narinfo_answer(info)

    def _narinfo_answer(info: PathInfo | None) -> Whole:
        (narinfo_misses if info is None else narinfo_hits).inc()
        metrics.activity.count("narinfo_misses" if info is None else "narinfo_hits")
        if info is None:
            return plain(404, "path not found")
        return Whole(200, narinfo_text(info), NARINFO_TYPE)

    @local_clients
    async def nar(request: Request) -> ASGIApp:
        return await _nar(request, functools.partial(substituter.lookup, again=True))

    async def store_nar(request: Request) -> ASGIApp:
        if (peer := request.scope.get(FAST_PATH)) is not None:  # a peer, with a ticket from the iroh side
            return await _nar_to_peer(request, peer)
        client = request.client.host if request.client else "?"
        return await _nar(request, _servable, uploads, f"for {client} through /store/")  # within the upload cap

    async def _nar(request: Request, lookup: Lookup, throttle: Throttle | None = None, note: str = "") -> ASGIApp:
        asked = await _asked(request, lookup)
        if not isinstance(asked, _Range):
            return asked
        info, start, end, part = asked
        fetch = metrics.activity.fetch(info.store_path.full(substituter.local.store_dir), end - start)
        fetch.detail = " ".join(filter(None, (f"bytes {start}-{end - 1}" if part else "", note)))
        try:
            with fetching(fetch):  # what the transfer from peers or the upstream credits
                parts = await _open(info, start, end)
        except HoldersFailed as error:
            metrics.activity.finish(fetch, "failed", "the peers holding it failed to send it (503: Nix asks again)")
            return _holders_failed(info.store_path.hash_part, error)
        except NarUnavailable as error:
            metrics.activity.finish(fetch, "failed", f"{error} (404)")
            log.warning("nar unavailable path=%s error=%s", info.store_path, error)
            return plain(404, "no peer has this NAR any more")
        except BaseException as error:  # not in flight any more, whatever happened
            metrics.activity.finish(fetch, "failed", type(error).__name__)
            raise
        return NarResponse(parts, end - start, functools.partial(_nar_finished, asked, fetch), throttle,
                           part, fetch.advance)

    async def _nar_to_peer(request: Request, peer: str) -> ASGIApp:
        """The fast path: a range of a local NAR for a peer, counted as what it is, an upload to that peer."""
        asked = await _asked(request, _servable)
        if not isinstance(asked, _Range):
            return asked
        info, start, end, part = asked
        upload = metrics.activity.upload(peer, info.store_path.full(substituter.local.store_dir), info.nar_size)
        try:
            parts = await _open(info, start, end)
        except NarUnavailable as error:  # gone since the lookup (collected): the peer asks over iroh
            metrics.activity.piece_done(upload, "failed", str(error))
            return plain(404, "no such NAR: the path is gone")
        except BaseException:
            metrics.activity.piece_done(upload, "failed")
            raise

        def progress(count: int) -> None:
            upload.advance(count)
            metrics.peer_sent_bytes.inc(count)
            metrics.peer_wire_bytes.labels("sent").inc(count)

        def finished(outcome: str, sent: int, seconds: float, error: Exception | None) -> None:
            metrics.activity.piece_done(upload, "stopped" if outcome == "aborted" else outcome, "over the fast path")
            log.log(logging.ERROR if error else logging.INFO, "served nar over the fast path %s peer=%s path=%s "
                    "bytes=%d seconds=%.3f mib_per_s=%.1f range=%d-%d%s", outcome, peer[:10], info.store_path, sent,
                    seconds, sent / (1 << 20) / max(seconds, 1e-6), start, end - 1, f" error={error}" if error else "")

        return NarResponse(parts, end - start, finished, uploads, part, progress)

    async def _asked(request: Request, lookup: Lookup) -> _Range | ASGIApp:
        """The NAR and range a request asks for; else the answer it gets (an error, or a HEAD's headers)."""
        encoded = request.path_params["narhash"]
        hash_part = request.query_params.get("hash", "")
        try:
            nar_hash = nix32.decode(encoded)
        except ValueError:
            nar_hash = b""
        if len(nar_hash) != SHA256_SIZE:
            return plain(400, f"invalid NAR hash {encoded[:64]!r}")
        if not is_hash_part(hash_part):
            return plain(404, "NAR URLs need ?hash=<store path hash>, as the narinfo gives them")
        try:
            info = await _lookup(lookup, hash_part)
        except _Refused as refused:
            return plain(403, f"not shared: {refused}")
        except HoldersFailed as error:
            return _holders_failed(hash_part, error)
        if info is None or info.nar_hash != nar_hash:
            log.info("nar not found hash=%s reason=%s", hash_part, "no such path" if info is None else "other contents")
            return plain(404, "no such NAR: the path is gone or has other contents now")
        size = info.nar_size
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except RangeError as error:
            return plain(400, f"bad Range header: {error}")
        except Unsatisfiable as error:
            return plain(416, f"unsatisfiable range: {error}", [(b"content-range", b"bytes */%d" % size)])
        start, end = wanted or (0, size)
        part = content_range(start, end, size) if wanted else None
        if request.method == "HEAD":
            headers = {"content-length": str(end - start), "accept-ranges": "bytes"}
            return Response(status_code=206 if part else 200, media_type=NAR_TYPE,
                            headers=headers | ({"content-range": part} if part else {}))
        return _Range(info, start, end, part)

    async def _open(info: PathInfo, start: int, end: int) -> AsyncIterator[Segment]:
        # a range that is the whole NAR is checked against NarHash as a whole NAR is
        return await (substituter.open_nar(info) if (start, end) == (0, info.nar_size) else
                      substituter.open_range(info, start, end))

    def _holders_failed(hash_part: str, error: HoldersFailed) -> ASGIApp:
        """Not a 404: the narinfo was just served, and Nix retries a 503 where it gives up on a 404."""
        log.warning("nar unavailable for now hash=%s error=%s", hash_part, error)
        return plain(503, "the peers holding this NAR failed to send it; ask again",
                     [(b"retry-after", b"%d" % RETRY_AFTER)])

    async def _servable(hash_part: str) -> PathInfo | None:
        """A local path if the serving policy lets anyone have it; raises _Refused otherwise."""
        info = await substituter.path_info(hash_part)
        if info is None or policy is None:
            return None
        verdict = await policy.may_serve(info)
        if not verdict.ok:
            metrics.refused.labels("policy").inc()
            log.info("refused path=%s reason=%s", info.store_path, verdict.reason)
            raise _Refused(verdict.reason)
        return info

    async def _lookup(lookup: Lookup, hash_part: str) -> PathInfo | None:
        try:
            return await lookup(hash_part)
        except Unavailable as error:
            log.error("lookup failed hash=%s error=%s", hash_part, error)
            metrics.store_errors.inc()
            return None

    def _nar_finished(asked: _Range, fetch: Live, outcome: str, sent: int, seconds: float,
                      error: Exception | None) -> None:
        metrics.nar_transfers.labels(outcome).inc()
        metrics.activity.finish(fetch, outcome, str(error) if error else "")
        level = logging.ERROR if error else logging.INFO
        log.log(level, "nar %s path=%s bytes=%d seconds=%.3f mib_per_s=%.1f%s%s", outcome, asked.info.store_path,
                sent, seconds, sent / (1 << 20) / max(seconds, 1e-6),
                f" range={asked.start}-{asked.end - 1}" if asked.part else "", f" error={error}" if error else "")

    async def listing(request: Request) -> Response:
        return await _listing(request, substituter.lookup)

    async def store_listing(request: Request) -> Response:
        return await _listing(request, _servable)

    async def _listing(request: Request, lookup: Lookup) -> Response:
        """The `.ls` Nix writes beside a NAR: local paths', and peers' paths' once proven."""
        hash_part = request.path_params["hash"]
        if not is_hash_part(hash_part):
            return plain(400, f"invalid store path hash {hash_part[:64]!r}")
        try:
            text = await substituter.listing(hash_part) if await _lookup(lookup, hash_part) else None
        except _Refused as refused:
            return plain(403, f"not shared: {refused}")
        except (HoldersFailed, Unavailable) as error:
            log.info("listing unavailable hash=%s error=%s", hash_part, error)
            text = None
        if text is None:
            return plain(404, "no listing: the path is not here, or its NAR has not been checked here yet")
        metrics.activity.count("listings_served")
        return Response(text, media_type="application/json")

    async def build_log(request: Request) -> Response:
        """`log/<drv basename>`: this host's build log, else a peer's, as plain text."""
        name = request.path_params["name"]
        try:
            drv = StorePath.derivation(name)
        except ValueError as error:
            return plain(400, f"log/ takes a derivation's basename, <hash>-<name>.drv: {error}")
        text = await substituter.build_log(drv)
        if text is None:
            return plain(404, "no build log of this derivation here or at any peer")
        metrics.activity.count("logs_served")
        return Response(text, media_type="text/plain; charset=utf-8")

    async def realisation(request: Request) -> Response:
        """`realisations/<drv hash>!<output>.doi` (Nix 2.8 and later), signed by this host."""
        name = request.path_params["name"]
        id_ = name.removesuffix(".doi")
        if id_ == name or not is_id(id_):
            return plain(400, f"not a realisation (sha256:<hex>!<output>.doi): {name[:100]!r}")
        return await _realisation(substituter.realisation(id_))

    async def build_trace(request: Request) -> Response:
        """`build-trace-v2/<drv basename>/<output>.doi` (current Nix), for a derivation in this store."""
        name, output = request.path_params["drv"], request.path_params["output"]
        try:
            drv = StorePath.derivation(name)
        except ValueError as error:
            return plain(400, f"build-trace-v2/ takes a derivation's basename, <hash>-<name>.drv: {error}")
        if not output.endswith(".doi") or not is_output_name(output.removesuffix(".doi")):
            return plain(400, f"not an output name followed by .doi: {output[:80]!r}")
        return await _realisation(substituter.build_trace(drv, output.removesuffix(".doi")))

    async def _realisation(lookup: Awaitable[Realisation | BuildTraceEntry | None]) -> Response:
        try:
            found = await lookup
        except Unavailable as error:
            log.error("realisation lookup failed error=%s", error)
            metrics.store_errors.inc()
            found = None
        if found is None:
            return plain(404, "no realisation of this derivation output here or at any peer")
        metrics.activity.count("realisations_served")
        return Response(found.to_text(), media_type="application/json")

    async def health(request: Request) -> Response:
        status, checks = "ok", {}
        if cache := substituter.nar_cache:
            checks["nar_cache"] = {"entries": cache.entries, "bytes": cache.total_bytes}
        if network is not None:
            checks["network"] = network()
        try:
            checks["paths"] = await substituter.local.count()
            checks["database"] = "ok"
        except Exception as error:  # health must report any failure, not raise it
            status, checks["database"] = "error", str(error)
        tracker = (checks.get("network") or {}).get("tracker")
        if status == "ok" and tracker and tracker.get("in_backoff"):
            status = "degraded"  # local paths are served; the peers the tracker knows are out of reach
        body = {
            "status": status,
            "version": __version__,
            "store_root": str(substituter.local.root),
            "signing_key": substituter.key.public.to_text() if substituter.key else None,
            **checks,
        }
        return JSONResponse(body, status_code=503 if status == "error" else 200)

    async def known_peers(request: Request) -> Response:
        return JSONResponse({"peers": peers() if peers else []})

    async def why(request: Request) -> ASGIApp:
        hash_part = request.path_params["hash"]
        if not is_hash_part(hash_part):
            return plain(400, f"invalid store path hash {hash_part[:64]!r}")
        admission = (network() if network else {}).get("admission")
        return JSONResponse({**await explain(substituter, policy, hash_part), "admission": admission})

    async def dashboard(request: Request) -> Response:
        page = render_dashboard(metrics.activity, network() if network else {}, peers() if peers else [],
                                dict(request.query_params), time.time())
        return HTMLResponse(page, headers=web.HEADERS)

    async def activity(request: Request) -> Response:
        return JSONResponse(metrics.activity.to_json(time.time()))

    async def transfers(request: Request) -> Response:
        try:
            offset = int(request.query_params.get("offset", 0))
            limit = int(request.query_params.get("limit", TRANSFERS_PAGE))
        except ValueError:
            offset = limit = -1
        if offset < 0 or not 1 <= limit <= MAX_TRANSFERS_PAGE:
            return plain(400, f"offset must be 0 or more and limit 1 to {MAX_TRANSFERS_PAGE}")
        page = metrics.activity.recent_page(offset, limit)
        return JSONResponse({"total": len(metrics.activity.recent), "offset": offset, "limit": limit,
                             "transfers": [t.to_json() for t in page]})

    async def static(request: Request) -> Response:
        if (asset := web.STATIC.get(request.path_params["name"])) is None:
            return plain(404, "no such file")
        content, media_type = asset
        return Response(content, media_type=media_type, headers={"cache-control": "max-age=300"})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/nix-cache-info", local_clients(nix_cache_info)),
        Route("/{hash}.narinfo", narinfo),
        Route("/{hash}.ls", local_clients(listing)),
        Route("/nar/{narhash}.nar", nar),
        Route("/log/{name:path}", local_clients(build_log)),
        Route("/realisations/{name:path}", local_clients(realisation)),
        Route("/build-trace-v2/{drv}/{output}", local_clients(build_trace)),
        Route("/health", health),
        Route("/metrics", prometheus),
        Route("/api/v1/peers", local_clients(known_peers)),
        Route("/api/v1/why/{hash}", local_clients(why)),
        Route("/api/v1/activity", local_clients(activity)),
        Route("/api/v1/transfers", local_clients(transfers)),
        Route("/dashboard", local_clients(dashboard)),
        Route("/static/{name}", local_clients(static)),
    ]
    if policy is not None:
        routes.append(Mount("/store", routes=[
            Route("/nix-cache-info", nix_cache_info),
            Route("/{hash}.narinfo", store_narinfo),
            Route("/{hash}.ls", store_listing),
            Route("/nar/{narhash}.nar", store_nar),
        ]))
    # (local route, /store/ route) by the regex group that matched
    hot = {"hash": (narinfo, store_narinfo), "narhash": (nar, store_nar)}

    def fast(scope: Scope) -> ASGIApp | None:
        """Nix's narinfo and NAR requests (from this host, or from peers under `/store/`) skip Starlette's
        routing and middleware chain, which cost more than a cached narinfo; the same handlers answer.
        A local path's narinfo that needs no database read is answered at once, without a task."""
        if scope["method"] not in ("GET", "HEAD") or not (match := _HOT_PATH.fullmatch(scope["path"])):
            return None
        public = match["store"] is not None
        if public and policy is None:
            return None
        param = "hash" if match["hash"] else "narhash"
        scope["path_params"] = {param: match[param]}
        scope["endpoint"] = hot[param][public]
        client = scope.get("client")
        if (param == "hash" and not public and is_hash_part(match["hash"]) and client and access.allowed(client[0])
                and (info := substituter.path_info_now(match["hash"]))):
            return _narinfo_answer(info)
        return _answer

    return MetricsMiddleware(Starlette(routes=routes), metrics, fast)


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    response = await scope["endpoint"](Request(scope, receive))
    await response(scope, receive, send)


class _Range(NamedTuple):
    """Bytes [start, end) of a path's NAR; `part` is the Content-Range of a range request (None: all of it)."""

    info: PathInfo
    start: int
    end: int
    part: str | None


class _Refused(Exception):
    """The serving policy keeps this path private."""


def _watch_nar_cache(metrics: Metrics, cache: NarCache) -> None:
    """The NAR cache keeps its own counters; the metrics read them at scrape time."""
    for kind, name, help, read in (
        ("counter", "peerix_nar_cache_hits", "NARs served whole from the NAR cache", lambda: cache.hits),
        ("counter", "peerix_nar_cache_stored", "NARs added to the NAR cache", lambda: cache.stored),
        ("counter", "peerix_nar_cache_evicted", "NARs evicted from the NAR cache", lambda: cache.evicted),
        ("gauge", "peerix_nar_cache_bytes", "Bytes held by the NAR cache", lambda: cache.total_bytes),
        ("gauge", "peerix_nar_cache_entries", "NARs held by the NAR cache", lambda: cache.entries),
    ):
        metrics.read_at_scrape(kind, name, help, read)
