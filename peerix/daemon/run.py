"""The daemon: wires the local store, the peer network and the HTTP face together, runs them,
and takes them down in order (deregister, close the endpoint, close the store)."""

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.types import ASGIApp

from ..common import systemd
from ..common.memory import give_back_large_buffers
from ..common.secrets import SecretFileError, load_secret_key, read_token, read_tokens, write_secret
from ..common.server import Server
from ..common.throttle import Throttle
from ..http.access import ClientAccess, parse_networks
from ..http.app import CacheSettings, create_app
from ..http.fast_path import fast_path_app
from ..http.zerocopy import ZeroCopyHttpToolsProtocol
from ..net import wire
from ..net.endpoint import BindError, EndpointSettings, PeerEndpoint
from ..net.fast_path import FastPath, Tickets
from ..net.lan import LanDiscovery, LanSettings
from ..net.tracker_client import TrackerClient, TrackerError, tls_context
from ..net.upstream import Upstream
from ..nix.signing import PublicKey, SecretKey
from ..store.held import HeldPaths
from ..store.local import LocalStore
from ..store.narcache import NarCache
from ..store.substituter import Substituter
from ..swarm.admission import Admission
from ..swarm.announcer import Announcer
from ..swarm.candidates import CandidateSource, LanSource, TrackerSource
from ..swarm.leases import Alone, LanLeases, Leases, TrackerLeases
from ..swarm.peer_service import PeerService
from ..swarm.peers import Peers
from ..swarm.policy import Policy
from ..swarm.pull_through import PullSettings, PullThrough
from ..swarm.remote import RemoteSettings, RemoteStore
from ..swarm.reputation import Reputation
from ..swarm.summaries import OwnSummary, PeerSummaries
from ..swarm.transfer import TransferSettings
from ..telemetry.activity import Activity
from ..telemetry.metrics import Metrics
from .config import Config

log = logging.getLogger(__name__)

MIN_FLEET_TOKEN = 16  # characters, as the tracker asks of its tokens: a short one could be guessed


def host_key(config: Config) -> SecretKey:
    """The host's one ed25519 key: it signs narinfo (Nix key format), is the iroh endpoint id and
    signs tracker requests. Made in the state directory on first start when none is configured."""
    path = config.state_dir / "host.key"
    if not path.exists():
        config.state_dir.mkdir(parents=True, exist_ok=True)
        key = SecretKey.generate(f"{config.name}-peerix-1")
        write_secret(path, key.to_text())
        log.warning("created host key path=%s: for Nix to accept what peerix signs, add to nix.conf: "
                    "extra-trusted-public-keys = %s", path, key.public.to_text())
    return load_secret_key(path)


def _fleet_tokens(path: Path) -> tuple[bytes, ...]:
    """The fleet tokens LAN packets prove (the first) and are checked against (any: a rotation)."""
    tokens = read_tokens(path)
    if any(len(token) < MIN_FLEET_TOKEN for token in tokens):
        raise SecretFileError(f"{path}: fleet tokens must be at least {MIN_FLEET_TOKEN} characters, one a line "
                              "(peerix-tracker token makes one)")
    return tuple(token.encode() for token in tokens)


async def run(config: Config) -> None:
    give_back_large_buffers()
    configured = load_secret_key(config.secret_key_file) if config.secret_key_file is not None else None
    fleet_tokens = _fleet_tokens(config.fleet_token_file) if config.fleet_token_file else ()
    tracker_token = read_token(config.tracker_token_file) if config.tracker and config.tracker_token_file else None
    tracker_tls = tls_context(config.tracker_ca_file) if config.tracker else None
    async with contextlib.AsyncExitStack() as stack:
        local = await stack.enter_async_context(LocalStore(config.store_root))  # before writing anything
        key = configured or host_key(config)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        activity_file = config.state_dir / "activity.json"
        metrics = Metrics(Activity.load(activity_file, config.upstream_rate))
        stack.callback(metrics.activity.close)
        stack.callback(metrics.activity.save, activity_file)
        nar_cache = NarCache(config.state_dir / "nar-cache", config.nar_cache_size) if config.nar_cache_size else None
        upstream = Upstream(config.upstream) if config.upstream else None
        if upstream is not None:
            stack.push_async_callback(upstream.aclose)
            metrics.activity.upstream_name = f"upstream {urlsplit(config.upstream).hostname}"
        policy = Policy([PublicKey.parse(k) for k in config.trusted_public_keys], config.accept, config.serve, upstream,
                        config.exclude)
        held = (HeldPaths(config.state_dir / "held", config.upstream_cache_size, local.store_dir)
                if upstream is not None and config.pull_through else None)
        substituter = Substituter(local, key, nar_cache, held=held)
        stack.callback(substituter.close)

        seed = bytes(key.key)  # the 32-byte ed25519 seed behind the signing key
        uploads, downloads = Throttle(config.max_upload_rate or 0), Throttle(config.max_download_rate or 0)
        fast_path_socket = _fast_path_socket(config.fast_path_listen) if config.fast_path else None
        if fast_path_socket is not None:
            stack.callback(fast_path_socket.close)
        tickets = Tickets(fast_path_socket.getsockname()[1]) if fast_path_socket is not None else None
        admission = Admission(config.peers, metrics, fleet_token=bool(fleet_tokens),
                              tracker_token=tracker_token is not None,
                              state_file=config.state_dir / "fleet-members.json", timeout=config.peer_timeout)
        lan = tracker_source = tracker = None
        own_summary = (OwnSummary(local, policy, held, timeout=config.peer_timeout,
                                  on_change=lambda: lan.announce() if lan is not None else None)
                       if config.lan_summaries and (config.lan or config.static_peers) else None)
        handlers = PeerService(substituter, policy, metrics, timeout=config.peer_timeout, uploads=uploads,
                               compression=config.compression, all_logs=config.serve_all_logs,
                               fast_path=tickets).handlers
        if own_summary is not None:
            handlers[wire.SUMMARY_ALPN] = own_summary.serve
        endpoint = await PeerEndpoint.start(
            seed,
            EndpointSettings(bind=config.iroh_listen, relays=config.relays, discovery=config.discovery,
                             connect_timeout=config.connect_timeout),
            admission.guard(handlers),
        )
        stack.push_async_callback(endpoint.close)
        reputation = Reputation()
        metrics.read_at_scrape("gauge", "peerix_peers_known", "Peers this host has talked to",
                               lambda: len(reputation.peers))
        metrics.read_at_scrape("gauge", "peerix_peers_backing_off", "Peers left alone after failures",
                               lambda: sum(not reputation.available(p) for p in reputation.peers))
        metrics.read_at_scrape("gauge", "peerix_peers_banned", "Peers banned for sending bytes that did not "
                               "match their NarHash", lambda: sum(reputation.banned(p) for p in reputation.peers))
        sources: list[CandidateSource] = []  # filled below: the sources report restarts to `peers`
        peers = Peers(endpoint, sources, reputation, metrics, downloads, query_timeout=config.connect_timeout + 2,
                      admits=admission.admits,
                      fast_path=FastPath(min(1.0, config.connect_timeout)) if config.fast_path else None)
        background = []
        if config.lan or config.static_peers:
            summaries = PeerSummaries(endpoint, metrics, timeout=config.connect_timeout + 2) if own_summary else None
            if summaries is not None:
                stack.push_async_callback(summaries.close)
            lan = LanDiscovery(seed, LanSettings(
                port=config.lan_port, interface=config.lan_interface, static_peers=config.static_peers,
                broadcast=config.lan,
                interval=config.lan_interval, expiry=config.lan_expiry, fleet_tokens=fleet_tokens,
                require_proof=bool(fleet_tokens) and config.peers != "any",
            ), endpoint.address, config.name, on_drop=lambda reason: metrics.lan_dropped.labels(reason).inc(),
                on_restart=peers.restarted, summary=lambda: own_summary.generation if own_summary else None,
                on_summary=summaries.heard if summaries else lambda address, generation: None)
            await lan.start()
            stack.push_async_callback(lan.close)
            admission.lan = lan
            sources.append(LanSource(lan, summaries))

        def tracker_status() -> dict[str, Any] | None:
            return None

        if config.tracker:
            tracker = TrackerClient(config.tracker, seed, config.state_dir, token=tracker_token, tls=tracker_tls)
            stack.push_async_callback(tracker.aclose)
            if tracker_token is not None:
                tracker.warn_plain_http()
            if config.peers != "any":
                background.append(admission.sync(tracker, config.fleet_sync))
            tracker_source = TrackerSource(tracker, metrics, on_restart=peers.restarted)
            stack.push_async_callback(tracker_source.close)
            sources.append(tracker_source)
            advised = {name: throttle for name, throttle, mine in (
                ("max_upload_rate", uploads, config.max_upload_rate),
                ("max_download_rate", downloads, config.max_download_rate)) if mine is None}  # local settings win
            announcer = Announcer(tracker, local, policy, endpoint.address, config.name, metrics, advised=advised,
                                  held=held)
            background.append(announcer.run())
            stack.push_async_callback(_deregister, tracker)

            def tracker_status() -> dict[str, Any] | None:
                return {"url": tracker.url, "announced_paths": announcer.announced,
                        "last_announce": announcer.last_success or None, "in_backoff": tracker.in_backoff,
                        "backoff_s": round(tracker.backoff_remaining, 1), "last_error": announcer.last_error}

        def peer_name(peer_id: str) -> str | None:
            """What the peer calls itself, as the LAN or the tracker last said."""
            if lan is not None and (seen := lan.peers.get(peer_id)) is not None:
                return seen.announcement.name
            record = tracker_source.seen.get(peer_id) if tracker_source is not None else None
            return record.name if record is not None else None

        metrics.activity.peer_name = peer_name
        transfers = TransferSettings(read_timeout=config.peer_timeout, split_threshold=config.split_threshold,
                                     max_sources=config.max_sources, stall_timeout=config.stall_timeout,
                                     temporary_dir=str(config.state_dir), compression=config.compression,
                                     name=config.name)
        pull = None
        if held is not None and upstream is not None:
            leases: Leases = LanLeases(lan) if lan is not None else Alone()
            if tracker is not None:
                leases = TrackerLeases(tracker, leases)
            pull = PullThrough(upstream, held, policy, peers, leases, transfers,
                               PullSettings(min_rate=config.pull_through_min_rate))
            stack.push_async_callback(pull.close)
        substituter.remote = RemoteStore(peers, policy, RemoteSettings(miss_ttl=config.miss_ttl, transfer=transfers),
                                         pull)

        def network() -> dict[str, Any]:
            address = endpoint.address()
            known = known_peers()
            return {
                "peer_id": endpoint.peer_id, "incarnation": endpoint.incarnation, "name": config.name,
                "direct_addresses": list(address.direct), "relay_url": address.relay_url, "peers_known": len(known),
                "lan_peers": sum(peer["source"] != "tracker" for peer in known) if lan else None,
                "tracker_peers": sum(peer["source"] == "tracker" for peer in known) if tracker_source else None,
                "peers_backing_off": sum(bool(p["reputation"] and p["reputation"]["backing_off"]
                                              and not p["reputation"]["banned"]) for p in known),
                "peers_banned": sum(bool(p["reputation"] and p["reputation"]["banned"]) for p in known),
                "max_upload_rate": uploads.rate or None, "max_download_rate": downloads.rate or None,
                "tracker": tracker_status(), "admission": admission.status(),
            }

        def known_peers() -> list[dict[str, Any]]:
            listed: dict[str, dict[str, Any]] = {}
            for peer_id, peer in (lan.peers.items() if lan else ()):
                address = peer.announcement.address
                listed[peer_id] = {"peer_id": peer_id, "name": peer.announcement.name, "source": peer.source,
                                   "direct_addresses": list(address.direct), "relay_url": address.relay_url,
                                   "last_seen": peer.seen_wall}
            for peer_id, record in (tracker_source.seen.items() if tracker_source else ()):
                listed.setdefault(peer_id, {"peer_id": peer_id, "name": record.name, "source": "tracker",
                                            "direct_addresses": list(record.addresses.direct),
                                            "relay_url": record.addresses.relay_url, "last_seen": record.last_seen})
            for peer_id, entry in listed.items():
                entry["admitted"] = admission.admitted_by(peer_id)
                stats = reputation.peers.get(peer_id)
                standing = reputation.standing(peer_id)
                entry["reputation"] = None if stats is None else {
                    "successes": stats.successes, "failures": stats.failures,
                    "latency_ms": None if stats.latency is None else round(stats.latency * 1000, 1),
                    "backing_off": not reputation.available(peer_id), "banned": reputation.banned(peer_id),
                    "last_error": stats.last_error or None,
                    "not_asked_for_s": round(standing[1], 1) if standing else None,
                    "ban_reason": stats.ban_reason or None,
                }
            return sorted(listed.values(), key=lambda e: (e["source"], e["name"] or "", e["peer_id"]))

        app = create_app(substituter, CacheSettings(priority=config.priority), metrics, network, known_peers,
                         ClientAccess(parse_networks(config.trusted_networks)), policy, uploads)
        host, port = config.listen
        server = _server(app, config, host=host, port=port)
        background += [_every(60, metrics.activity.save, activity_file), _ready(server, endpoint.peer_id, local)]
        if own_summary is not None:
            background.append(own_summary.run())
        tasks = [asyncio.create_task(job) for job in background]
        if fast_path_socket is not None and tickets is not None:
            fast_server = _server(fast_path_app(app, tickets, metrics), config, signals=False)
            stack.push_async_callback(_stop, fast_server, asyncio.create_task(fast_server.serve([fast_path_socket])))
            log.info("fast path listen=%s:%d", *fast_path_socket.getsockname()[:2])
        log.info("serving store_root=%s listen=%s:%d key=%s peer_id=%s tracker=%s", config.store_root, host, port,
                 key.public.to_text(), endpoint.peer_id, ",".join(config.tracker) or None)
        try:
            await server.serve()
        finally:
            systemd.notify("STOPPING=1")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _server(app: ASGIApp, config: Config, signals: bool = True, **where: Any) -> Server:
    return Server(uvicorn.Config(
        app, log_config=None, access_log=config.access_log, lifespan="off", server_header=False,
        proxy_headers=False, timeout_keep_alive=30, http=ZeroCopyHttpToolsProtocol, timeout_graceful_shutdown=10,
        **where,
    ), signals)


def _fast_path_socket(listen: tuple[str, int]) -> socket.socket:
    """Bound before anything starts, so that a taken port stops the daemon with a clear error."""
    host, port = listen
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=1024)
    except OSError as error:
        raise BindError(f"cannot listen for the fast path on TCP {host}:{port}: {error.strerror} "
                        "(fast_path_listen; fast_path = false turns it off)") from None


async def _stop(server: Server, serving: asyncio.Task) -> None:
    """A server that does not watch the signals: asked to stop, then given its grace period."""
    server.should_exit = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(serving, server.config.timeout_graceful_shutdown + 1)


async def _ready(server: uvicorn.Server, peer_id: str, local: LocalStore) -> None:
    """Tell systemd once the HTTP server listens, then keep its watchdog fed."""
    while not server.started:
        await asyncio.sleep(0.05)
    systemd.notify("READY=1", f"STATUS=serving, peer {peer_id[:12]}")
    await systemd.watchdog(functools.partial(_database_answers, local))


async def _database_answers(local: LocalStore) -> bool:
    try:
        async with asyncio.timeout(5):
            await local.count()
        return True
    except Exception:  # any failure means unhealthy: the watchdog decides what to do
        return False


async def _every(seconds: float, job: Callable[..., None], *args: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            job(*args)
        except OSError as error:
            log.warning("periodic job failed job=%s error=%s", getattr(job, "__name__", job), error)


async def _deregister(tracker: TrackerClient) -> None:
    try:
        async with asyncio.timeout(3):
            await tracker.deregister()
        log.info("deregistered from tracker")
    except (TrackerError, TimeoutError) as error:
        log.warning("could not deregister error=%s", error)
