"""Abuse limits and bad input: each gets a clear 4xx of one JSON shape and a log line, never a 5xx."""

import json
import random
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, PEERS_PATH

from conftest import BACKENDS, new_database
from trackertools import (
    TrackerProcess,
    announce,
    announcement,
    error_of,
    new_key,
    random_hashes,
    running_tracker,
    signed,
)

HASH = random_hashes(1, random.Random("test_tracker_limits"))[0]  # the same in every xdist worker: it names tests


@pytest.fixture(scope="module", params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackerProcess]:
    directory = tmp_path_factory.mktemp("limits")
    with running_tracker(new_database(request, request.param, directory, "tracker"), directory, "--max-body", "64K",
                         "--max-announce-hashes", "1000", "--max-lookup-hashes", "100") as tracker:
        yield tracker
        assert "Traceback" not in tracker.log and " 500 " not in tracker.log


def body_of(value: object) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


BAD_ANNOUNCES = [
    (b'{"name": "host", "hashes": [', 400, "malformed_json"),
    (b"\xff\xfe not even text", 400, "malformed_json"),
    (b'{"name": "host", "addresses": {}, "hashes": [], "x": NaN}', 400, "malformed_json"),
    (b"[" * 20000 + b"]" * 20000, 400, "malformed_json"),
    ([announcement(hashes=[])], 400, "invalid_request"),
    ({**announcement(hashes=[]), "name": 42}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "name": ""}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "name": "x" * 65}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "name": "bell\a"}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": "127.0.0.1:1"}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"direct": ["localhost:80"]}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"direct": ["::1:80"]}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"direct": ["10.0.0.1:0"]}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"direct": ["10.0.0.1:1"] * 17}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"relay_url": "javascript:alert(1)"}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"http_url": 12304}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"incarnation": 7}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"incarnation": "x" * 65}}, 400, "invalid_request"),
    ({**announcement(hashes=[]), "addresses": {"incarnation": "<script>"}}, 400, "invalid_request"),
    (announcement(hashes="abc"), 400, "invalid_request"),
    (announcement(hashes={"a": 1}), 400, "invalid_request"),
    (announcement(hashes=[HASH], since=1), 400, "invalid_request"),
    (announcement(), 400, "invalid_request"),
    (announcement(since="1", added=[]), 400, "invalid_request"),
    (announcement(since=True, added=[]), 400, "invalid_request"),
    (announcement(since=-1, added=[]), 400, "invalid_request"),
    (announcement(since=1, added=[HASH], removed=[HASH]), 400, "invalid_request"),
    (announcement(hashes=[HASH, "e" * 32]), 400, "invalid_hash"),
    (announcement(hashes=[HASH, 12345]), 400, "invalid_hash"),
    (announcement(hashes=[HASH.upper()]), 400, "invalid_hash"),
    (announcement(since=1, added=[], removed=[None]), 400, "invalid_hash"),
    (announcement(hashes=random_hashes(1001)), 413, "too_many_hashes"),
    (announcement(since=1, added=random_hashes(600), removed=random_hashes(401)), 413, "too_many_hashes"),
    (announcement(hashes=[HASH], padding="x" * 70_000), 413, "body_too_large"),
]


@pytest.mark.parametrize("payload, status, code", BAD_ANNOUNCES)
def test_bad_announces(tracker: TrackerProcess, payload: object, status: int, code: str) -> None:
    response = signed(tracker, new_key(), "POST", ANNOUNCE_PATH, body=body_of(payload))
    assert response.status_code == status, response.text
    assert error_of(response) == code
    assert f"refused status={status} code={code} method=POST path={ANNOUNCE_PATH}" in tracker.log


def test_the_bad_hash_is_named(tracker: TrackerProcess) -> None:
    response = announce(tracker, new_key(), hashes=[HASH, HASH, "not-a-hash"])
    assert response.json()["error"]["message"].startswith("hashes[2] is not a store path hash part")


def test_a_huge_declared_body_is_refused_before_it_is_read(tracker: TrackerProcess) -> None:
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=10) as sock:
        sock.sendall(f"POST {ANNOUNCE_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {1 << 30}\r\n\r\n{{".encode())
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("method, path, payload, status, code", [
    ("GET", f"{LOOKUP_PATH}/{'e' * 32}", None, 400, "invalid_hash"),
    ("GET", f"{LOOKUP_PATH}/{HASH[:31]}", None, 400, "invalid_hash"),
    ("GET", f"{LOOKUP_PATH}/{HASH}?limit=0", None, 400, "invalid_request"),
    ("GET", f"{LOOKUP_PATH}/{HASH}?limit=many", None, 400, "invalid_request"),
    ("POST", LOOKUP_PATH, {"hash": [HASH]}, 400, "invalid_request"),
    ("POST", LOOKUP_PATH, {"hashes": [HASH, "x"]}, 400, "invalid_hash"),
    ("POST", LOOKUP_PATH, {"hashes": [HASH], "limit": -3}, 400, "invalid_request"),
    ("POST", LOOKUP_PATH, {"hashes": random_hashes(101)}, 413, "too_many_hashes"),
    ("POST", LOOKUP_PATH, b"hashes=abc", 400, "malformed_json"),
    ("GET", "/api/v1/nothing", None, 404, "not_found"),
    ("GET", "/../../etc/passwd", None, 404, "not_found"),
    ("PUT", ANNOUNCE_PATH, None, 405, "method_not_allowed"),
    ("GET", ANNOUNCE_PATH, None, 405, "method_not_allowed"),
    ("DELETE", PEERS_PATH, None, 405, "method_not_allowed"),
])
def test_bad_reads(tracker: TrackerProcess, method: str, path: str, payload: object, status: int, code: str) -> None:
    content = None if payload is None else body_of(payload)
    response = httpx.request(method, tracker.url + path, content=content)
    assert response.status_code == status, response.text
    assert error_of(response) == code


def test_deregister_needs_a_peer_id(tracker: TrackerProcess) -> None:
    response = signed(tracker, new_key(), "DELETE", f"{PEERS_PATH}/NOT-A-KEY")
    assert response.status_code == 400 and error_of(response) == "invalid_peer_id"
    response = httpx.delete(tracker.url + f"{PEERS_PATH}/{'a' * 64}")
    assert response.status_code == 401 and error_of(response) == "unauthenticated"


def test_every_refusal_is_counted(tracker: TrackerProcess) -> None:
    before = tracker.metric('peerix_tracker_refusals_total{code="invalid_hash"}')
    httpx.get(tracker.url + f"{LOOKUP_PATH}/{'e' * 32}")
    assert tracker.metric('peerix_tracker_refusals_total{code="invalid_hash"}') == before + 1


def test_rate_limit_per_address(start_tracker) -> None:
    tracker = start_tracker(limits=("--address-rate", "1", "--address-burst", "3"))
    answers = [httpx.get(tracker.url + f"{LOOKUP_PATH}/{HASH}") for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert error_of(answers[3]) == "rate_limited" and answers[3].headers["retry-after"] == "1"
    assert tracker.get("/health").status_code == 200  # the operator's pages are not limited
    time.sleep(1.0)
    assert httpx.get(tracker.url + f"{LOOKUP_PATH}/{HASH}").status_code == 200
    assert tracker.metric('peerix_tracker_refusals_total{code="rate_limited"}') == 1


def test_rate_limit_per_peer_cannot_be_spent_by_forgers(start_tracker) -> None:
    tracker = start_tracker(limits=("--peer-rate", "0.2", "--peer-burst", "2"))
    victim, other = new_key(), new_key()
    victim_id = bytes(victim.verify_key).hex()
    for _ in range(5):  # forged writes in the victim's name are refused before they reach its bucket
        forged = announce(tracker, other, hashes=[], headers={"x-peerix-peer": victim_id})
        assert forged.status_code == 401
    assert announce(tracker, victim, hashes=[HASH]).status_code == 200
    assert announce(tracker, victim, hashes=[HASH]).status_code == 200
    limited = announce(tracker, victim, hashes=[HASH])
    assert limited.status_code == 429 and error_of(limited) == "rate_limited"
    assert int(limited.headers["retry-after"]) in (4, 5)
    assert announce(tracker, other, hashes=[HASH]).status_code == 200  # other peers keep their own budget


def test_forwarded_addresses_count_only_behind_a_trusted_proxy(start_tracker) -> None:
    def statuses(tracker: TrackerProcess) -> list[int]:
        return [httpx.get(tracker.url + f"{LOOKUP_PATH}/{HASH}", headers={"x-forwarded-for": f"203.0.113.{i}"})
                .status_code for i in range(3)]

    limits = ("--address-rate", "0.1", "--address-burst", "2")
    # A client cannot dodge its limit by inventing addresses...
    assert statuses(start_tracker(limits=limits)) == [200, 200, 429]
    # ...but behind a proxy the operator trusts, each real client has its own budget.
    proxied = start_tracker("--trusted-proxy", "127.0.0.1", limits=limits)
    assert statuses(proxied) == [200, 200, 200]
    httpx.get(proxied.url + f"{LOOKUP_PATH}/{'e' * 32}", headers={"x-forwarded-for": "198.51.100.4"})
    assert "code=invalid_hash method=GET" in proxied.log and "client=198.51.100.4" in proxied.log
