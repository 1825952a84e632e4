"""Every write is signed by the peer it changes; forgeries, replays, stale requests and outsiders are refused."""

import time
from collections.abc import Iterator

import httpx
import pytest

from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, PEERS_PATH, sign

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


@pytest.fixture(scope="module", params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackerProcess]:
    directory = tmp_path_factory.mktemp("auth")
    with running_tracker(new_database(request, request.param, directory, "tracker"), directory) as tracker:
        yield tracker


def holders(tracker: TrackerProcess, hash_part: str) -> list[str]:
    response = tracker.get(f"{LOOKUP_PATH}/{hash_part}")
    assert response.status_code == 200, response.text
    return [peer["peer_id"] for peer in response.json()["peers"]]


def test_unsigned_write_is_refused(tracker: TrackerProcess) -> None:
    hashes = random_hashes(3)
    response = httpx.post(tracker.url + ANNOUNCE_PATH, json=announcement(hashes=hashes))
    assert response.status_code == 401 and error_of(response) == "unauthenticated"
    assert holders(tracker, hashes[0]) == []


def test_forged_signature_is_refused(tracker: TrackerProcess) -> None:
    key, hashes = new_key(), random_hashes(3)
    response = announce(tracker, key, hashes=hashes, headers={"x-peerix-signature": "00" * 64})
    assert response.status_code == 401 and error_of(response) == "bad_signature"
    # A genuine signature over another body: the body was changed after signing.
    body = announcement(hashes=hashes)
    headers = sign(key, "POST", ANNOUNCE_PATH, b'{"name": "innocent"}')
    response = signed(tracker, key, "POST", ANNOUNCE_PATH, body, headers=headers)
    assert response.status_code == 401 and error_of(response) == "bad_signature"
    assert holders(tracker, hashes[0]) == []
    assert "refused status=401 code=bad_signature" in tracker.log


def test_a_peer_cannot_write_for_another(tracker: TrackerProcess) -> None:
    alice, mallory, hashes = new_key(), new_key(), random_hashes(3)
    alice_id, mallory_id = bytes(alice.verify_key).hex(), bytes(mallory.verify_key).hex()
    assert announce(tracker, alice, hashes=hashes).status_code == 200

    # Mallory signs with her key but claims to be Alice.
    response = announce(tracker, mallory, hashes=[], headers={"x-peerix-peer": alice_id})
    assert response.status_code == 401 and error_of(response) == "bad_signature"
    # Mallory deregisters Alice with a valid signature of her own.
    response = signed(tracker, mallory, "DELETE", f"{PEERS_PATH}/{alice_id}")
    assert response.status_code == 403 and error_of(response) == "forbidden"
    # Mallory announces Alice's endpoint as her own addresses.
    response = signed(tracker, mallory, "POST", ANNOUNCE_PATH,
                      {**announcement(hashes=hashes), "addresses": {"endpoint_id": alice_id}})
    assert response.status_code == 403 and error_of(response) == "forbidden"
    # A request signed for one route does not pass on another.
    path = f"{PEERS_PATH}/{alice_id}"
    response = signed(tracker, alice, "DELETE", path, headers=sign(alice, "DELETE", f"{PEERS_PATH}/{mallory_id}"))
    assert response.status_code == 401 and error_of(response) == "bad_signature"

    assert holders(tracker, hashes[0]) == [alice_id]


def test_replayed_request_is_refused(tracker: TrackerProcess) -> None:
    key, hashes = new_key(), random_hashes(3)
    headers = sign(key, "POST", ANNOUNCE_PATH, b'{"name":"h","addresses":{},"hashes":[]}')
    first = signed(tracker, key, "POST", ANNOUNCE_PATH, body=b'{"name":"h","addresses":{},"hashes":[]}',
                   headers=headers)
    assert first.status_code == 200, first.text
    assert announce(tracker, key, hashes=hashes).status_code == 200
    replay = signed(tracker, key, "POST", ANNOUNCE_PATH, body=b'{"name":"h","addresses":{},"hashes":[]}',
                    headers=headers)
    assert replay.status_code == 401 and error_of(replay) == "replayed"
    assert holders(tracker, hashes[0]) == [bytes(key.verify_key).hex()]  # the replay did not empty the set


# +62, not +61: the timestamp is whole seconds (up to 1 s behind) and takes a while to arrive
@pytest.mark.parametrize("offset, status", [(-300, 401), (-61, 401), (+62, 401), (+300, 401), (+30, 200)])
def test_timestamps_outside_the_window_are_refused(tracker: TrackerProcess, offset: int, status: int) -> None:
    response = announce(tracker, new_key(), hashes=random_hashes(2), timestamp=int(time.time()) + offset)
    assert response.status_code == status, response.text
    if status == 401:
        assert error_of(response) == "stale_timestamp"


def test_a_slow_clock_within_the_window_is_accepted(start_tracker) -> None:
    tracker = start_tracker("--max-clock-skew", "4s")
    while tracker.get("/health").json()["uptime"] < 3:
        time.sleep(0.2)
    assert announce(tracker, new_key(), hashes=[], timestamp=int(time.time()) - 2).status_code == 200
    response = announce(tracker, new_key(), hashes=[], timestamp=int(time.time()) - 6)
    assert response.status_code == 401 and error_of(response) == "stale_timestamp"


def test_malformed_signature_headers_are_refused(tracker: TrackerProcess) -> None:
    response = announce(tracker, new_key(), hashes=[], headers={"x-peerix-nonce": "not-hex"})
    assert response.status_code == 401 and error_of(response) == "unauthenticated"
    assert "x-peerix-nonce" in response.json()["error"]["message"]


def test_a_request_captured_before_a_restart_stays_dead(start_tracker) -> None:
    """The replay cache lives in memory: requests signed before the tracker started are refused."""
    tracker = start_tracker()
    key = new_key()
    body = b'{"name":"h","addresses":{},"hashes":[]}'
    headers = sign(key, "POST", ANNOUNCE_PATH, body)
    assert signed(tracker, key, "POST", ANNOUNCE_PATH, body=body, headers=headers).status_code == 200
    time.sleep(1.0)  # the restarted tracker's start lies in a later second than the capture
    tracker.restart()
    replay = signed(tracker, key, "POST", ANNOUNCE_PATH, body=body, headers=headers)
    assert replay.status_code == 401 and error_of(replay) == "stale_timestamp"
    assert announce(tracker, key, hashes=[]).status_code == 200  # a fresh signature is fine


def test_allowlist_membership(start_tracker) -> None:
    member, outsider, hashes = new_key(), new_key(), random_hashes(2)
    tracker = start_tracker("--allow", bytes(member.verify_key).hex())
    assert announce(tracker, member, hashes=hashes).status_code == 200
    response = announce(tracker, outsider, hashes=hashes)
    assert response.status_code == 403 and error_of(response) == "not_member"

    # Reads are for members too: where the fleet's machines are is nobody else's business.
    response = tracker.get(f"{LOOKUP_PATH}/{hashes[0]}")
    assert response.status_code == 401 and error_of(response) == "unauthenticated"
    response = signed(tracker, outsider, "GET", f"{LOOKUP_PATH}/{hashes[0]}")
    assert response.status_code == 403 and error_of(response) == "not_member"
    response = signed(tracker, member, "GET", f"{LOOKUP_PATH}/{hashes[0]}")
    assert response.status_code == 200 and len(response.json()["peers"]) == 1
    response = signed(tracker, member, "GET", f"{LOOKUP_PATH}/{hashes[0]}?limit=1",
                      headers=sign(member, "GET", f"{LOOKUP_PATH}/{hashes[0]}?limit=2"))
    assert response.status_code == 401 and error_of(response) == "bad_signature"  # the query is signed too


def test_forgeries_do_not_tell_who_is_on_the_allowlist(start_tracker) -> None:
    """The signature is checked before membership: a request not signed by the key it names is 401 whatever
    id it names, so a stranger cannot probe the allowlist with forged requests."""
    member, stranger = new_key(), new_key()
    member_id, unlisted_id = bytes(member.verify_key).hex(), bytes(new_key().verify_key).hex()
    tracker = start_tracker("--allow", member_id)
    hash_part = random_hashes(1)[0]
    for claimed in (member_id, unlisted_id):
        response = announce(tracker, stranger, hashes=[], headers={"x-peerix-peer": claimed})
        assert response.status_code == 401 and error_of(response) == "bad_signature", claimed
        response = signed(tracker, stranger, "GET", f"{LOOKUP_PATH}/{hash_part}", headers={"x-peerix-peer": claimed})
        assert response.status_code == 401 and error_of(response) == "bad_signature", claimed
    # A stranger's genuine signature is still refused for what it is: not a member.
    response = announce(tracker, stranger, hashes=[])
    assert response.status_code == 403 and error_of(response) == "not_member"


def test_token_membership(start_tracker, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("current-token-0123456789\nprevious-token-0123456789\n")
    tokens.chmod(0o600)
    tracker = start_tracker("--token-file", str(tokens))
    key, hashes = new_key(), random_hashes(2)

    def with_token(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    response = announce(tracker, key, hashes=hashes)
    assert response.status_code == 401 and error_of(response) == "unauthenticated"
    response = announce(tracker, key, hashes=hashes, headers=with_token("wrong-token-0123456789"))
    assert response.status_code == 403 and error_of(response) == "not_member"
    assert announce(tracker, key, hashes=hashes, headers=with_token("previous-token-0123456789")).status_code == 200
    # The token lets a peer in; it does not replace the peer's signature.
    response = announce(tracker, key, hashes=hashes, headers={**with_token("current-token-0123456789"),
                                                              "x-peerix-signature": "00" * 64})
    assert response.status_code == 401 and error_of(response) == "bad_signature"

    response = tracker.get(f"{LOOKUP_PATH}/{hashes[0]}")
    assert response.status_code == 401 and error_of(response) == "unauthenticated"
    response = tracker.get(f"{LOOKUP_PATH}/{hashes[0]}", headers=with_token("current-token-0123456789"))
    assert response.status_code == 200 and response.json()["peers"][0]["peer_id"] == bytes(key.verify_key).hex()
