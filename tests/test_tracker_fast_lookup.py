"""The single lookup's fast path answers as the Starlette route did: headers, refusals, metrics, failures."""

import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from peerix.net.tracker_protocol import LOOKUP_PATH, pack_hash
from tracker.app import Tracker, create_app
from tracker.auth import Authenticator
from tracker.config import Config
from tracker.metrics import Metrics
from tracker.model import Addresses, Announce
from tracker.ratelimit import RateLimiter
from tracker.server import open_storage
from tracker.storage import DatabaseError
from tracker.sweep import Sweeper

from trackertools import random_hashes

HASH, OTHER = random_hashes(2)


@pytest.fixture
async def setup(tracker_db: Callable) -> AsyncIterator[tuple[httpx.AsyncClient, Tracker]]:
    config = Config(db=tracker_db(), address_rate=1, address_burst=5)
    storage = open_storage(config.db)
    await storage.open()
    await storage.announce(b"\1" * 32, Announce("one", Addresses("01" * 32), hashes=[pack_hash(HASH)]), time.time())
    metrics = Metrics(config.replica)
    now = time.time()
    tracker = Tracker(config, storage, Authenticator("open", frozenset(), (), 60, now),
                      RateLimiter(config.address_rate, config.address_burst), RateLimiter(1, 30), metrics,
                      Sweeper(storage, config.remove_after, config.sweep_interval, metrics), now)
    transport = httpx.ASGITransport(app=create_app(tracker), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tracker") as client:
        yield client, tracker
    await storage.close()


def sample(tracker: Tracker, name: str, **labels: str) -> float | None:
    return tracker.metrics.registry.get_sample_value(name, {**labels, "replica": tracker.config.replica})


async def test_answers_and_refusals(setup: tuple[httpx.AsyncClient, Tracker]) -> None:
    client, tracker = setup
    found = await client.get(f"{LOOKUP_PATH}/{HASH}")
    assert found.status_code == 200 and found.headers["content-type"] == "application/json"
    assert int(found.headers["content-length"]) == len(found.content)
    assert [peer["name"] for peer in found.json()["peers"]] == ["one"] and found.json()["hash"] == HASH
    assert (await client.get(f"{LOOKUP_PATH}/{OTHER}?limit=3")).json() == {"hash": OTHER, "peers": []}
    head = await client.head(f"{LOOKUP_PATH}/{HASH}")  # HEAD goes through the Starlette route
    assert head.status_code == 200 and head.headers["content-length"] == found.headers["content-length"]
    bad = await client.get(f"{LOOKUP_PATH}/{HASH}?limit=none")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert (await client.get(f"{LOOKUP_PATH}/{HASH}/more")).json()["error"]["code"] == "not_found"
    limited = await client.get(f"{LOOKUP_PATH}/{HASH}")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "1"

    assert sample(tracker, "peerix_tracker_http_requests_total", route="lookup", method="GET", status="200") == 2
    assert sample(tracker, "peerix_tracker_http_requests_total", route="lookup", method="HEAD", status="200") == 1
    assert sample(tracker, "peerix_tracker_http_requests_total", route="lookup", method="GET", status="400") == 1
    # the address limit refuses before routing: not counted as a lookup
    assert sample(tracker, "peerix_tracker_http_requests_total", route="unmatched", method="GET", status="429") == 1
    assert sample(tracker, "peerix_tracker_http_request_duration_seconds_count", route="lookup") == 4
    assert sample(tracker, "peerix_tracker_lookups_total", kind="single") == 3
    assert sample(tracker, "peerix_tracker_lookup_hashes_total", result="hit") == 2
    assert sample(tracker, "peerix_tracker_lookup_hashes_total", result="miss") == 1
    assert sample(tracker, "peerix_tracker_refusals_total", code="rate_limited") == 1


async def test_failures(setup: tuple[httpx.AsyncClient, Tracker], monkeypatch: pytest.MonkeyPatch) -> None:
    client, tracker = setup

    async def database_fails(*args: object) -> list:
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(tracker.storage, "holders", database_fails)
    failed = await client.get(f"{LOOKUP_PATH}/{HASH}")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "unavailable"

    async def bug(*args: object) -> list:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tracker.storage, "holders", bug)
    failed = await client.get(f"{LOOKUP_PATH}/{HASH}")
    assert failed.status_code == 500 and failed.json() == {
        "error": {"code": "internal", "message": "the tracker failed; this is a bug"}}
    assert sample(tracker, "peerix_tracker_http_requests_total", route="lookup", method="GET", status="503") == 1
    assert sample(tracker, "peerix_tracker_http_requests_total", route="lookup", method="GET", status="500") == 1
