"""Health, metrics and the audit trail; the sweep's own account of itself."""

import asyncio
import os
import time
from collections.abc import Callable

from peerix.net.tracker_protocol import LOOKUP_PATH, PEERS_PATH, pack_hash
from tracker.metrics import Metrics
from tracker.model import Addresses, Announce
from tracker.server import open_storage
from tracker.sweep import Sweeper

from trackertools import announce, new_key, random_hashes, signed


def test_health_metrics_and_audit(start_tracker) -> None:
    tracker = start_tracker()
    key, hashes = new_key(), random_hashes(10)
    peer = bytes(key.verify_key).hex()
    seq = announce(tracker, key, hashes=hashes).json()["seq"]
    seq = announce(tracker, key, since=seq, added=random_hashes(2), removed=hashes[:1]).json()["seq"]
    announce(tracker, key, since=seq)
    tracker.get(f"{LOOKUP_PATH}/{hashes[5]}")
    tracker.get(f"{LOOKUP_PATH}/{random_hashes(1)[0]}")

    health = tracker.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["membership"] == "open" and body["uptime"] >= 0
    assert body["database"]["status"] == "ok" and body["database"]["bytes"] > 0
    assert body["sweep"]["status"] == "ok" and body["sweep"]["last_error"] is None
    assert (body["peers"], body["paths"], body["holdings"]) == ({"online": 1, "offline": 0}, 11, 11)

    samples = {
        'peerix_tracker_announces_total{kind="full"}': 1,
        'peerix_tracker_announces_total{kind="delta"}': 1,
        'peerix_tracker_announces_total{kind="heartbeat"}': 1,
        'peerix_tracker_announced_hashes_total{change="added"}': 12,
        'peerix_tracker_announced_hashes_total{change="removed"}': 1,
        'peerix_tracker_lookups_total{kind="single"}': 2,
        'peerix_tracker_lookup_hashes_total{result="hit"}': 1,
        'peerix_tracker_lookup_hashes_total{result="miss"}': 1,
        'peerix_tracker_http_requests_total{method="POST",route="announce",status="200"}': 3,
        'peerix_tracker_http_request_duration_seconds_count{route="lookup"}': 2,
        "peerix_tracker_peers_online": 1,
        "peerix_tracker_paths": 11,
        "peerix_tracker_holdings": 11,
    }
    assert {name: tracker.metric(name) for name in samples} == samples
    assert tracker.metric("peerix_tracker_database_bytes") > 0

    signed(tracker, key, "DELETE", f"{PEERS_PATH}/{peer}")
    audit = [line for line in tracker.log.splitlines() if " tracker.audit: " in line]
    assert [line.split(" tracker.audit: ")[1].split()[0] for line in audit] == ["announce"] * 3 + ["deregister"]
    assert all(f"peer={peer}" in line and "client=127.0.0.1" in line for line in audit)
    assert "kind=delta" in audit[1] and "added=2 removed=1 paths=11" in audit[1]


async def test_the_sweep_reports_how_it_went(tracker_db: Callable) -> None:
    storage = open_storage(tracker_db())
    await storage.open()
    hashes = [pack_hash(h) for h in random_hashes(3)]
    long_ago = time.time() - 7200
    await storage.announce(os.urandom(32), Announce("old", Addresses("x"), hashes=hashes), long_ago)
    await storage.announce(os.urandom(32), Announce("new", Addresses("y"), hashes=hashes[:1]), time.time())
    metrics = Metrics("replica-1")
    sweeper = Sweeper(storage, remove_after=3600, interval=0.05, metrics=metrics)
    assert sweeper.status(time.time())["status"] == "stopped"

    sweeper.start()
    async with asyncio.timeout(30):
        while sweeper.last_run is None:
            await asyncio.sleep(0.02)
    status = sweeper.status(time.time())
    assert status["status"] == "ok" and status["last_removed"] == 1
    assert [peer.name for peer in await storage.peers()] == ["new"] and (await storage.counts(0)).paths == 1
    assert sweeper.status(time.time() + 1)["status"] == "late"

    await sweeper.stop()  # else a sweep may remove the stale peer before the storage closes, and never fail
    await storage.announce(os.urandom(32), Announce("stale", Addresses("z"), hashes=hashes), long_ago)
    await storage.close()  # the next sweep cannot reach the database
    sweeper.start()
    async with asyncio.timeout(30):
        while sweeper.last_error is None:
            await asyncio.sleep(0.02)
    assert sweeper.status(time.time())["status"] == "failed" and "closed" in sweeper.last_error
    assert metrics.registry.get_sample_value("peerix_tracker_sweeps_total",
                                             {"result": "failed", "replica": "replica-1"}) >= 1
    await sweeper.stop()
    assert sweeper.status(time.time())["status"] == "stopped"
