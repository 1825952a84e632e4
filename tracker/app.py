"""The tracker's HTTP face: the API (announce, lookup, peers), the dashboard, health and metrics.

Every refusal is `{"error": {"code": ..., "message": ...}}` with a 4xx status, counted by code and
logged in one line; a database failure is a 503 of the same shape. Client addresses are limited
before anything else is read, peers after their signature is verified, so forged requests cannot
spend a real peer's budget.

The dashboard names every peer with its addresses, which closed reads (allowlist, token) keep from
strangers; under those it is shown only to clients on the tracker's own host: a loopback address as
uvicorn resolves it (through trusted proxies' X-Forwarded-For), with no forwarding header naming
anyone else, since that is a proxy on this host that the tracker does not trust relaying a stranger.
"""

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from peerix import __version__
from peerix.common import web
from peerix.common.asgi import MetricsMiddleware, Whole
from peerix.net.tracker_protocol import (
    ADMIN_AUDIT_PATH,
    ADMIN_PEERS_PATH,
    ANNOUNCE_PATH,
    API,
    LEASES_PATH,
    LOOKUP_PATH,
    MEMBERS_PATH,
    PEERS_PATH,
    STATS_PATH,
    Signature,
    is_peer_id,
    pack_hash,
)

from . import dashboard, openapi
from .audit import AuditTrail, admin_actor
from .auth import Authenticator
from .config import Config
from .metrics import Metrics
from .model import (
    ApiError,
    Peer,
    dumps,
    error_json,
    parse_announce,
    parse_deregister,
    parse_limit,
    parse_lookup,
    render_batch,
    render_lease,
    render_lookup,
    render_peer,
)
from .ratelimit import RateLimiter
from .storage import Counts, DatabaseError, SequenceMismatch, Storage
from .sweep import Sweeper

log = logging.getLogger(__name__)
audit = logging.getLogger("tracker.audit")

JSON = "application/json"
_JSON_BYTES = JSON.encode()
BODY_TIMEOUT = 30.0
MAX_AUDIT_EVENTS = 10_000
Handler = Callable[[Request], Awaitable[Response]]
_DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read and dropped, so the client sees the 413


@dataclass(frozen=True)
class Tracker:
    """Everything the routes use, assembled once by the server."""

    config: Config
    storage: Storage
    auth: Authenticator
    address_limits: RateLimiter
    peer_limits: RateLimiter
    metrics: Metrics
    sweeper: Sweeper
    started_at: float
    lease_limits: RateLimiter | None = None  # lease requests per peer; none: unlimited (tests)
    trail: AuditTrail = field(default_factory=lambda: AuditTrail(None, 0))


def create_app(t: Tracker) -> ASGIApp:
    config, storage, metrics, trail = t.config, t.storage, t.metrics, t.trail

    def online_since(now: float) -> float:
        return now - config.offline_after

    def unavailable(route: str, error: DatabaseError) -> ApiError:
        log.error("database failed route=%s error=%s", route, error)
        return ApiError(503, "unavailable", "the tracker's database failed; retry later")

    def refuse(scope: Scope, error: ApiError) -> Response:
        metrics.refusals.labels(error.code).inc()
        level = {429: logging.DEBUG, 401: logging.WARNING, 403: logging.WARNING}.get(error.status, logging.INFO)
        state = scope.get("state") or {}
        log.log(level, "refused status=%d code=%s method=%s path=%s client=%s peer=%s message=%r", error.status,
                error.code, scope.get("method"), scope.get("path", "")[:200], _client(scope), state.get("peer"),
                error.message)
        if _is_write(scope) and 400 <= error.status < 500 and error.status != 409:  # 409: "send the full set"
            peer = state.get("peer")
            trail.refused(f"peer:{peer}" if peer else f"client:{_client(scope)}", time.time(), status=error.status,
                          code=error.code, method=scope.get("method"), path=scope.get("path", "")[:200],
                          client=_client(scope))
        return Response(error_json(error), status_code=error.status, headers=error.headers, media_type=JSON)

    def api_route(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def answer(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ApiError as error:
                return refuse(request.scope, error)
            except DatabaseError as error:
                return refuse(request.scope, unavailable(endpoint.__name__, error))
        return answer

    def signature_of(scope: Scope, headers: Headers, body: bytes, now: float, write: bool) -> Signature | None:
        """The request's verified signature (None for an anonymous read); ApiError when it is refused."""
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        signature = t.auth.authenticate(scope["method"], path, headers, body, now, write)
        scope.setdefault("state", {})["peer"] = signature and signature.peer_id  # as request.state.peer: logged
        return signature

    async def authenticate_write(request: Request, body: bytes, now: float,
                                 limits: RateLimiter | None = t.peer_limits) -> str:
        """A write's signature, its replay check (with the storage: across replicas) and the peer's rate limit;
        the signing peer."""
        signature = signature_of(request.scope, request.headers, body, now, write=True)
        assert signature is not None
        if not await storage.claim(*t.auth.replay_key(signature)):
            raise ApiError(401, "replayed", "this request was already received; sign each request anew")
        if limits is not None and (wait := limits.take(signature.peer_id, now)):
            raise _rate_limited(wait, "this peer")
        return signature.peer_id

    def packed_hash(request: Request) -> bytes:
        hash_part = request.path_params["hash"]
        try:
            return pack_hash(hash_part)
        except ValueError:
            raise ApiError(400, "invalid_hash", f"not a store path hash part (32 nix32 characters): "
                           f"{hash_part[:64]!r}") from None

    @api_route
    async def lease(request: Request) -> Response:
        """Take, renew or learn about the lease on a path: which host fetches it from the upstream for the
        fleet. Only a peer the tracker knows (it announced) may hold one: the others must reach it. With
        `?done=1` the holder says its copy is whole: it is named for three times the TTL more, while its
        announce of the path is on its way, so that nobody goes upstream for the path again meanwhile."""
        now = time.time()
        packed = packed_hash(request)
        body = await _read_body(request, config.max_body)
        peer_id = await authenticate_write(request, body, now, t.lease_limits)
        key = bytes.fromhex(peer_id)
        ttl = config.lease_ttl * (3 if request.query_params.get("done") == "1" else 1)
        held = await storage.lease(packed, key, now + ttl, now)
        granted = held.holder == key
        if granted and (held.peer is None or not held.peer.is_online(online_since(now))):
            await storage.release(packed, key)
            raise ApiError(409, "not_announced", "a lease goes to an online peer that others can reach: announce "
                           "first")
        metrics.leases.labels("granted" if granted else "held").inc()
        holder = None if granted else held.peer
        return Response(render_lease(request.path_params["hash"], granted, held.until, config.lease_ttl, holder),
                        media_type=JSON)

    @api_route
    async def release(request: Request) -> Response:
        now = time.time()
        packed = packed_hash(request)
        body = await _read_body(request, config.max_body)
        peer_id = await authenticate_write(request, body, now, t.lease_limits)
        released = await storage.release(packed, bytes.fromhex(peer_id))
        if released:
            metrics.leases.labels("released").inc()
        return JSONResponse({"hash": request.path_params["hash"], "released": released})

    advice = {"advice": {name: rate for name, rate in (("max_upload_rate", config.advised_upload_rate),
                                                        ("max_download_rate", config.advised_download_rate))
                         if rate}}
    if not advice["advice"]:
        advice = {}

    @api_route
    async def announce(request: Request) -> Response:
        now = time.time()
        body = await _read_body(request, config.max_body)
        peer_id = await authenticate_write(request, body, now)
        update = parse_announce(body, peer_id, config.max_announce_hashes)
        try:
            peer, added, removed = await storage.announce(bytes.fromhex(peer_id), update, now)
        except SequenceMismatch as error:
            raise ApiError(409, "sequence_mismatch", f"since {update.since} does not match: {error}; "
                           "announce the full set") from None
        metrics.announced(update.kind, added, removed, now)
        if peer.first_seen == now:  # a row made by this announce
            trail.record(f"peer:{peer_id}", "joined", peer=peer_id, name=peer.name, client=_client(request.scope))
        audit.info("announce peer=%s name=%r kind=%s seq=%d added=%d removed=%d paths=%d client=%s", peer_id,
                   peer.name, update.kind, peer.seq, added, removed, peer.paths, _client(request.scope))
        return JSONResponse({"seq": peer.seq, "paths": peer.paths, **advice})

    async def answer_lookup(scope: Scope, headers: Headers, hash_part: str) -> bytes:
        """The body of a single lookup; ApiError when refused. Shared by the route and the fast path."""
        now = time.time()
        signature_of(scope, headers, b"", now, write=False)
        try:
            packed = pack_hash(hash_part)
        except ValueError:
            raise ApiError(400, "invalid_hash", f"not a store path hash part (32 nix32 characters): "
                           f"{hash_part[:64]!r}") from None
        query = scope["query_string"]
        limit = parse_limit(QueryParams(query).get("limit"), config.lookup_limit) if query else config.lookup_limit
        peers = await storage.holders(packed, online_since(now), limit)
        count_lookups("single", [peers], now)
        return render_lookup(hash_part, peers).encode()

    @api_route
    async def lookup(request: Request) -> Response:
        return Response(await answer_lookup(request.scope, request.headers, request.path_params["hash"]),
                        media_type=JSON)

    @api_route
    async def lookup_batch(request: Request) -> Response:
        now = time.time()
        body = await _read_body(request, config.max_body)
        signature_of(request.scope, request.headers, body, now, write=False)
        asked, limit = parse_lookup(body, config.max_lookup_hashes, config.lookup_limit)
        held = await storage.holders_many(list(asked.values()), online_since(now), limit)
        found = {hash_part: held.get(packed, []) for hash_part, packed in asked.items()}
        count_lookups("batch", found.values(), now)
        return Response(render_batch(found), media_type=JSON)

    def count_lookups(kind: str, results: Collection[list[Peer]], now: float) -> None:
        hits = sum(1 for peers in results if peers)
        metrics.looked_up(kind, hits, len(results) - hits, now)

    async def listing(now: float) -> Response:
        since = online_since(now)
        records = ",".join(render_peer(peer, peer.is_online(since)) for peer in await storage.peers())
        return Response(f'{{"peers":[{records}]}}', media_type=JSON)

    @api_route
    async def peers(request: Request) -> Response:
        now = time.time()
        signature_of(request.scope, request.headers, b"", now, write=False)
        return await listing(now)

    async def known_peer(peer_id: str) -> Peer:
        if not is_peer_id(peer_id):
            raise ApiError(400, "invalid_peer_id", "a peer id is 64 lowercase hex characters")
        peer = await storage.peer(bytes.fromhex(peer_id))
        if peer is None:
            raise ApiError(404, "not_found", "this tracker holds nothing for the peer")
        return peer

    @api_route
    async def peer(request: Request) -> Response:
        now = time.time()
        signature_of(request.scope, request.headers, b"", now, write=False)
        found = await known_peer(request.path_params["peer_id"])
        return Response(render_peer(found, found.is_online(online_since(now))), media_type=JSON)

    @api_route
    async def stats(request: Request) -> Response:
        """Counts and this replica's last hour, open as /health is: they tell counts, not peers."""
        now = time.time()
        counts = await storage.counts(online_since(now))
        metrics.counted(counts, now)
        return JSONResponse(metrics.stats(counts, now))

    @api_route
    async def deregister(request: Request) -> Response:
        now = time.time()
        body = await _read_body(request, config.max_body)
        peer_id = await authenticate_write(request, body, now)
        target = request.path_params["peer_id"]
        if not is_peer_id(target):
            raise ApiError(400, "invalid_peer_id", "a peer id is 64 lowercase hex characters")
        if target != peer_id:
            raise ApiError(403, "forbidden", "a peer can only deregister itself")
        forget = parse_deregister(body)
        key = bytes.fromhex(target)
        peer = await (storage.remove(key) if forget else storage.depart(key, now))
        if peer is None:
            raise ApiError(404, "not_found", "this tracker holds nothing for the peer")
        audit.info("deregister peer=%s name=%r forget=%s paths=%d client=%s", peer_id, peer.name,
                   "yes" if forget else "no", peer.paths, _client(request.scope))
        if forget:
            trail.record(f"peer:{peer_id}", "left", peer=peer_id, name=peer.name, reason="deregistered",
                         paths=peer.paths, client=_client(request.scope))
        return JSONResponse({"removed" if forget else "departed": peer_id, "paths": peer.paths})

    def admin(request: Request) -> str:
        """Admin calls carry `Authorization: Bearer <token>` with a token from admin_token_file. A call
        without one is unauthenticated (401) whether or not the admin API is on. The actor, for the trail."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "no admin token: the admin API needs Authorization: Bearer "
                                                "<admin token> (peerix-tracker admin --token-file FILE)")
        if not config.admin_tokens:
            raise ApiError(403, "admin_disabled", "the admin API is off: start the tracker with an admin_token_file")
        if not any(hmac.compare_digest(token.encode(), known.encode()) for known in config.admin_tokens):
            raise ApiError(401, "unauthorized", "wrong admin token: it is not one of the tracker's admin_token_file")
        return admin_actor(token)

    def admin_target(request: Request) -> tuple[str, bytes]:
        actor = admin(request)
        target = request.path_params["peer_id"]
        if not is_peer_id(target):
            raise ApiError(400, "invalid_peer_id", "a peer id is 64 lowercase hex characters")
        return actor, bytes.fromhex(target)

    @api_route
    async def admin_peers(request: Request) -> Response:
        admin(request)
        return await listing(time.time())

    @api_route
    async def admin_remove(request: Request) -> Response:
        actor, target = admin_target(request)
        peer = await storage.remove(target)
        if peer is None:
            raise ApiError(404, "not_found", "this tracker holds nothing for the peer")
        audit.info("admin remove peer=%s name=%r paths=%d client=%s", peer.peer_id, peer.name, peer.paths,
                   _client(request.scope))
        trail.record(actor, "removed", peer=peer.peer_id, name=peer.name, paths=peer.paths,
                     client=_client(request.scope))
        return JSONResponse({"removed": peer.peer_id, "paths": peer.paths})

    @api_route
    async def admin_purge(request: Request) -> Response:
        actor, target = admin_target(request)
        purged = await storage.purge(target)
        if purged is None:
            raise ApiError(404, "not_found", "this tracker holds nothing for the peer")
        peer, dropped = purged
        audit.info("admin purge peer=%s name=%r paths=%d client=%s", peer.peer_id, peer.name, dropped,
                   _client(request.scope))
        trail.record(actor, "purged", peer=peer.peer_id, name=peer.name, paths=dropped, client=_client(request.scope))
        return JSONResponse({"purged": peer.peer_id, "paths": dropped})

    @api_route
    async def admin_audit(request: Request) -> Response:
        admin(request)
        since = request.query_params.get("since")
        limit = parse_limit(request.query_params.get("limit"), MAX_AUDIT_EVENTS)
        try:
            since_time = None if since is None else float(since)
        except ValueError:
            since_time = math.nan
        if since_time is not None and not math.isfinite(since_time):
            raise ApiError(400, "invalid_request", "since is a Unix time in seconds")
        return JSONResponse({"events": await asyncio.to_thread(trail.read, since_time, limit)})

    @api_route
    async def members(request: Request) -> Response:
        """The members daemons answer under closed membership: the peers held that are still admitted."""
        signature_of(request.scope, request.headers, b"", time.time(), write=False)
        listed = [] if t.auth.membership == "open" else sorted(
            peer.peer_id for peer in await storage.peers() if t.auth.admitted(peer.peer_id))
        version = hashlib.sha256(f"{t.auth.membership}:{','.join(listed)}".encode()).hexdigest()[:16]
        unchanged = request.query_params.get("since") == version
        return JSONResponse({"membership": t.auth.membership, "version": version,
                             **({} if unchanged else {"members": listed})})

    def dashboard_page(endpoint: Callable[[Request, float], Awaitable[str]]) -> Handler:
        """A page of the dashboard: for everyone under open membership, else for the tracker's own host."""
        @api_route
        @functools.wraps(endpoint)
        async def page(request: Request) -> Response:
            if t.auth.membership != "open" and not _on_this_host(request.scope, request.headers):
                raise ApiError(
                    403, "dashboard_private", f"membership is {t.auth.membership}: the dashboard names every peer "
                    "with its addresses, so it is shown only on the tracker's own host (a loopback client, e.g. "
                    "through an SSH tunnel)")
            return HTMLResponse(await endpoint(request, time.time()), headers=web.HEADERS)
        return page

    @dashboard_page
    async def home(request: Request, now: float) -> str:
        since = online_since(now)
        counts = await storage.counts(since)
        metrics.counted(counts, now)
        snapshot = dashboard.Snapshot(
            now=now, version=__version__, replica=config.replica, membership=t.auth.membership,
            offline_after=config.offline_after, remove_after=config.remove_after,
            peers=[(peer, peer.is_online(since)) for peer in await storage.peers()], counts=counts,
            announces_per_minute=metrics.per_minute("announces", now),
            lookups_per_minute=metrics.per_minute("lookups", now), sweep=t.sweeper.status(now),
        )
        return dashboard.render(snapshot, dict(request.query_params))

    @dashboard_page
    async def search(request: Request, now: float) -> str:
        text = request.query_params.get("q", "")
        hash_part = dashboard.search_hash(text)
        holders = await storage.holders(pack_hash(hash_part), online_since(now), config.lookup_limit) if hash_part \
            else []
        return dashboard.render_search(text, hash_part, holders, now)

    @dashboard_page
    async def peer_page(request: Request, now: float) -> str:
        found = await known_peer(request.path_params["peer_id"])
        return dashboard.render_peer(found, found.is_online(online_since(now)), now)

    async def static(request: Request) -> Response:
        if (asset := web.STATIC.get(request.path_params["name"])) is None:
            raise HTTPException(404, "no such file")
        content, media_type = asset
        return Response(content, media_type=media_type, headers={"cache-control": "max-age=300"})

    async def fleet(now: float) -> tuple[dict, Counts | None]:
        """The database's state and the fleet's counts, or why they cannot be had (within 2 s)."""
        try:
            async with asyncio.timeout(2):
                database = {"status": "ok", "schema_version": await storage.check(), "bytes": await storage.size()}
                counts = await storage.counts(online_since(now))
                metrics.counted(counts, now)
                return database, counts
        except Exception as error:  # reported, not raised: these pages must answer when the database does not
            return {"status": "error", "error": f"{type(error).__name__}: {error}"}, None

    async def health(request: Request) -> Response:
        now = time.time()
        database, counts = await fleet(now)
        sweep = t.sweeper.status(now)
        status = "error" if counts is None else "degraded" if sweep["status"] != "ok" else "ok"
        body = {
            "status": status, "version": __version__, "replica": config.replica, "uptime": round(now - t.started_at, 1),
            "membership": t.auth.membership, "database": database, "sweep": sweep,
            "peers": counts and {"online": counts.peers_online, "offline": counts.peers_offline},
            "paths": counts and counts.paths, "holdings": counts and counts.holdings,
        }
        return JSONResponse(body, status_code=503 if counts is None else 200)

    async def prometheus(request: Request) -> Response:
        database, counts = await fleet(time.time())
        metrics.fleet(counts, database.get("bytes"))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    api_document = dumps(openapi.document()).encode()

    async def api_description(request: Request) -> Response:
        return Response(api_document, media_type=JSON)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        return refuse(request.scope, ApiError(error.status_code, code, str(error.detail), dict(error.headers or {})))

    async def internal_error(request: Request, error: Exception) -> Response:
        return Response(error_json(ApiError(500, "internal", "the tracker failed; this is a bug")), 500,
                        media_type=JSON)

    routes = [
        Route(ANNOUNCE_PATH, announce, methods=["POST"]),
        Route(LOOKUP_PATH + "/{hash}", lookup, methods=["GET"]),
        Route(LOOKUP_PATH, lookup_batch, methods=["POST"]),
        Route(PEERS_PATH, peers, methods=["GET"]),
        Route(PEERS_PATH + "/{peer_id}", deregister, methods=["DELETE"]),
        Route(PEERS_PATH + "/{peer_id}", peer, methods=["GET"]),
        Route(STATS_PATH, stats, methods=["GET"]),
        Route(LEASES_PATH + "/{hash}", lease, methods=["POST"]),
        Route(LEASES_PATH + "/{hash}", release, methods=["DELETE"]),
        Route(MEMBERS_PATH, members, methods=["GET"]),
        Route(ADMIN_AUDIT_PATH, admin_audit, methods=["GET"]),
        Route(ADMIN_PEERS_PATH, admin_peers, methods=["GET"]),
        Route(ADMIN_PEERS_PATH + "/{peer_id}", admin_remove, methods=["DELETE"]),
        Route(ADMIN_PEERS_PATH + "/{peer_id}/purge", admin_purge, methods=["POST"]),
        Route("/health", health),
        Route("/metrics", prometheus),
        Route("/openapi.json", api_description),
    ]
    if config.dashboard:
        routes += [Route("/", home), Route("/search", search), Route("/peers/{peer_id}", peer_page),
                   Route("/static/{name}", static)]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
    address_limits = t.address_limits
    prefix = LOOKUP_PATH + "/"
    skip = len(prefix)

    def fast_lookup(scope: Scope) -> ASGIApp | None:
        """Single lookups are most of a tracker's requests: `GET /api/v1/lookup/<hash>` is answered by
        `answer_single_lookup`, which does what the router's chain does for it (the per-address limit,
        the route's refusals, a 500 for a bug); a path Starlette would not route to `lookup` goes on to it."""
        path = scope["path"]
        if (scope["method"] != "GET" or not path.startswith(prefix) or "/" in path[skip:] or len(path) == skip
                or scope.get("root_path")):
            return None
        return answer_single_lookup

    async def answer_single_lookup(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if wait := address_limits.take(_client(scope), time.time()):
                raise _rate_limited(wait, "this address")  # before routing, as AddressLimit: "unmatched"
            scope["endpoint"] = lookup
            response: ASGIApp = Whole(200, await answer_lookup(scope, Headers(scope=scope), scope["path"][skip:]),
                                      _JSON_BYTES)
        except ApiError as error:
            response = refuse(scope, error)
        except DatabaseError as error:
            response = refuse(scope, unavailable("lookup", error))
        except Exception:  # as Starlette: the 500 answered, the error raised on for uvicorn to log
            await (await internal_error(Request(scope), RuntimeError()))(scope, receive, send)
            raise
        await response(scope, receive, send)

    return MetricsMiddleware(AddressLimit(app, t.address_limits, refuse), metrics, fast_lookup)


class AddressLimit:
    """The per-address token bucket, in front of every API route: it runs before a body is read."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, refuse: Callable[[Scope, ApiError], Response]) -> None:
        self.app = app
        self.limiter = limiter
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API + "/"):
            if wait := self.limiter.take(_client(scope), time.time()):
                return await self.refuse(scope, _rate_limited(wait, "this address"))(scope, receive, send)
        await self.app(scope, receive, send)


def _is_write(scope: Scope) -> bool:
    """A request that would change what the tracker holds: every API call but reads (GET, the batch lookup)."""
    return (scope.get("method") not in ("GET", "HEAD") and scope.get("path", "").startswith(API + "/")
            and scope.get("path") != LOOKUP_PATH)


def _rate_limited(wait: float, who: str) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(429, "rate_limited", f"too many requests from {who}; retry in {seconds} s",
                    {"retry-after": str(seconds)})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


_FORWARDED_FOR = re.compile(r'for\s*=\s*"?([^";,]*)', re.IGNORECASE)


def _on_this_host(scope: Scope, headers: Headers) -> bool:
    """A loopback client (after trusted proxies), and every address a forwarding header names loopback too."""
    named = [_client(scope)]
    for value in headers.getlist("x-forwarded-for") + headers.getlist("x-real-ip"):
        named += value.split(",")
    for value in headers.getlist("forwarded"):
        named += _FORWARDED_FOR.findall(value)
    return all(_is_loopback(text) for text in named)


def _is_loopback(text: str) -> bool:
    """Whether an address (IPv4 or IPv6, with or without a port, IPv6 maybe in brackets) is loopback."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False  # unknown, obfuscated or a name: not known to be this host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes, within BODY_TIMEOUT; 413 or 408 otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise ApiError(400, "invalid_request", "Content-Length must be a number")
    too_large = ApiError(413, "body_too_large", f"the body exceeds the tracker's limit of {limit} bytes")
    if declared and int(declared) > limit * _DRAIN_FACTOR:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                elif size > limit * _DRAIN_FACTOR:
                    break
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
    if size > limit:
        raise too_large
    return b"".join(chunks)
