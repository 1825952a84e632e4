"""Announces with delta sync, lookups, deregistration, and state that survives restarts and crashes."""

import random
import signal
import sqlite3
import threading
import time

import httpx
import pytest

from peerix.net.tracker_protocol import LOOKUP_PATH, PEERS_PATH
from tracker import postgres, sqlite

from trackertools import TrackerProcess, announce, assert_whole, error_of, holders, new_key, random_hashes, signed

SCHEMA_VERSION = {"sqlite": sqlite.SCHEMA_VERSION, "postgresql": postgres.SCHEMA_VERSION}


def peer_id(key) -> str:
    return bytes(key.verify_key).hex()


def batch(tracker: TrackerProcess, hashes: list[str], **extra) -> dict[str, list[str]]:
    response = httpx.post(tracker.url + LOOKUP_PATH, json={"hashes": hashes, **extra}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    return {hash_part: [answer["peers"][i]["peer_id"] for i in indexes] for hash_part, indexes in
            answer["results"].items()}


def peers(tracker: TrackerProcess) -> dict[str, dict]:
    return {peer["peer_id"]: peer for peer in tracker.get(PEERS_PATH).json()["peers"]}


def test_full_announce_then_lookup(start_tracker) -> None:
    tracker = start_tracker()
    key, hashes = new_key(), random_hashes(50)
    response = signed(tracker, key, "POST", "/api/v1/announce", {
        "name": "builder-1",
        "addresses": {"endpoint_id": peer_id(key), "direct": ["192.0.2.7:4433", "[2001:db8::7]:4433"],
                      "relay_url": "https://relay.example.org/", "http_url": "http://192.0.2.7:12304",
                      "incarnation": "5f3a9c0e1b2d4f60"},
        "hashes": hashes + hashes[:5],  # repeats count once
    })
    assert response.status_code == 200, response.text
    assert response.json()["paths"] == 50 and response.json()["seq"] > 0

    answer = tracker.get(f"{LOOKUP_PATH}/{hashes[7]}").json()
    assert answer["hash"] == hashes[7]
    [peer] = answer["peers"]
    assert peer["peer_id"] == peer_id(key) and peer["name"] == "builder-1" and peer["paths"] == 50
    assert peer["addresses"] == {"endpoint_id": peer_id(key), "direct": ["192.0.2.7:4433", "[2001:db8::7]:4433"],
                                 "relay_url": "https://relay.example.org/", "http_url": "http://192.0.2.7:12304",
                                 "incarnation": "5f3a9c0e1b2d4f60"}
    assert abs(peer["last_seen"] - time.time()) < 5
    assert holders(tracker, random_hashes(1)[0]) == []
    health = tracker.get("/health").json()
    assert (health["paths"], health["holdings"], health["peers"]) == (50, 50, {"online": 1, "offline": 0})


def test_delta_round_trip(start_tracker) -> None:
    tracker = start_tracker()
    key = new_key()
    first, more = random_hashes(100), random_hashes(30)
    seq = announce(tracker, key, hashes=first).json()["seq"]

    response = announce(tracker, key, since=seq, added=more, removed=first[:40])
    assert response.status_code == 200, response.text
    assert response.json() == {"seq": seq + 1, "paths": 90}
    assert holders(tracker, first[0]) == [] and holders(tracker, first[50]) == [peer_id(key)]
    assert holders(tracker, more[0]) == [peer_id(key)]

    # Adding what is held and removing what is not changes nothing but the sequence.
    response = announce(tracker, key, since=seq + 1, added=more[:3], removed=random_hashes(3))
    assert response.json() == {"seq": seq + 2, "paths": 90}

    # An empty delta is a heartbeat: it keeps the sequence and refreshes last seen.
    before = peers(tracker)[peer_id(key)]["last_seen"]
    time.sleep(0.05)
    response = announce(tracker, key, since=seq + 2)
    assert response.json() == {"seq": seq + 2, "paths": 90}
    assert peers(tracker)[peer_id(key)]["last_seen"] > before

    expected = set(first[40:]) | set(more)
    found = batch(tracker, first + more)
    assert set(found) == expected and all(found[h] == [peer_id(key)] for h in expected)
    health = tracker.get("/health").json()
    assert health["paths"] == 90 and health["holdings"] == 90


def test_a_delta_on_the_wrong_sequence_gets_409_and_a_full_announce_heals(start_tracker) -> None:
    tracker = start_tracker()
    key, hashes = new_key(), random_hashes(20)
    response = announce(tracker, key, since=1, added=hashes)  # the tracker holds nothing for this peer
    assert response.status_code == 409 and error_of(response) == "sequence_mismatch"
    seq = announce(tracker, key, hashes=hashes).json()["seq"]

    stale = announce(tracker, key, since=seq - 1, removed=hashes)
    assert stale.status_code == 409 and error_of(stale) == "sequence_mismatch"
    assert holders(tracker, hashes[0]) == [peer_id(key)]  # nothing of the refused delta was applied

    new = random_hashes(5)
    resync = announce(tracker, key, hashes=new)
    assert resync.status_code == 200 and resync.json()["seq"] > seq and resync.json()["paths"] == 5
    assert holders(tracker, hashes[0]) == [] and holders(tracker, new[0]) == [peer_id(key)]
    assert tracker.get("/health").json()["paths"] == 5  # hashes nobody holds any more are gone
    assert tracker.metric('peerix_tracker_refusals_total{code="sequence_mismatch"}') == 2


def test_lookups_answer_the_most_recently_seen_first(start_tracker) -> None:
    tracker = start_tracker()
    shared = random_hashes(3)
    keys = [new_key() for _ in range(3)]
    seqs = [announce(tracker, key, hashes=shared).json()["seq"] for key in keys]
    assert holders(tracker, shared[0]) == [peer_id(key) for key in reversed(keys)]
    time.sleep(0.01)
    announce(tracker, keys[0], since=seqs[0])  # heartbeat
    assert holders(tracker, shared[1]) == [peer_id(keys[0]), peer_id(keys[2]), peer_id(keys[1])]
    response = tracker.get(f"{LOOKUP_PATH}/{shared[1]}?limit=2")
    assert [peer["peer_id"] for peer in response.json()["peers"]] == [peer_id(keys[0]), peer_id(keys[2])]
    assert list(batch(tracker, shared, limit=1).values()) == [[peer_id(keys[0])]] * 3


def test_batch_lookup(start_tracker) -> None:
    tracker = start_tracker()
    alice, bob = new_key(), new_key()
    common, only_bob, nobody = random_hashes(10), random_hashes(10), random_hashes(10)
    announce(tracker, alice, hashes=common)
    announce(tracker, bob, hashes=common + only_bob)
    asked = nobody + only_bob + common + common[:2]
    response = httpx.post(tracker.url + LOOKUP_PATH, json={"hashes": asked})
    answer = response.json()
    assert sorted(peer["name"] for peer in answer["peers"]) == ["host", "host"]  # each peer once
    found = batch(tracker, asked)
    assert list(found) == only_bob + common  # hits only, each once, in the order asked
    assert all(found[h] == [peer_id(bob)] for h in only_bob)
    assert all(found[h] == [peer_id(bob), peer_id(alice)] for h in common)
    assert tracker.metric('peerix_tracker_lookup_hashes_total{result="miss"}') == 20  # two batches of 10 misses


def test_deregister_leaves_and_forget_removes(start_tracker) -> None:
    tracker = start_tracker()
    key, other, hashes = new_key(), new_key(), random_hashes(30)
    seq = announce(tracker, key, hashes=hashes).json()["seq"]
    announce(tracker, other, hashes=hashes[:10])
    # Leaving: out of lookups at once, offline in the list, but the set stays for a delta on return.
    response = signed(tracker, key, "DELETE", f"{PEERS_PATH}/{peer_id(key)}")
    assert response.status_code == 200 and response.json() == {"departed": peer_id(key), "paths": 30}
    assert holders(tracker, hashes[20]) == [] and holders(tracker, hashes[0]) == [peer_id(other)]
    assert peers(tracker)[peer_id(key)]["online"] is False
    back = announce(tracker, key, since=seq, added=[], removed=[])
    assert back.status_code == 200 and back.json()["paths"] == 30
    assert holders(tracker, hashes[20]) == [peer_id(key)]
    # Forgetting: the peer and its set are gone.
    response = signed(tracker, key, "DELETE", f"{PEERS_PATH}/{peer_id(key)}", {"forget": True})
    assert response.status_code == 200 and response.json() == {"removed": peer_id(key), "paths": 30}
    assert holders(tracker, hashes[20]) == [] and list(peers(tracker)) == [peer_id(other)]
    assert tracker.get("/health").json()["paths"] == 10
    again = signed(tracker, key, "DELETE", f"{PEERS_PATH}/{peer_id(key)}")
    assert again.status_code == 404 and error_of(again) == "not_found"
    assert f"deregister peer={peer_id(key)}" in tracker.log and "forget=yes" in tracker.log
    bad = signed(tracker, other, "DELETE", f"{PEERS_PATH}/{peer_id(other)}", {"forget": "please"})
    assert bad.status_code == 400 and error_of(bad) == "invalid_request"


def test_restart_keeps_everything(start_tracker, backend: str) -> None:
    tracker = start_tracker()
    keys = [new_key() for _ in range(3)]
    sets = [random_hashes(200) for _ in keys]
    seqs = [announce(tracker, key, name=f"host-{i}", hashes=hashes).json()["seq"]
            for i, (key, hashes) in enumerate(zip(keys, sets, strict=True))]
    before = peers(tracker)
    tracker.restart()

    assert peers(tracker) == before
    for key, hashes in zip(keys, sets, strict=True):
        assert holders(tracker, hashes[-1]) == [peer_id(key)]
    response = announce(tracker, keys[0], since=seqs[0], removed=sets[0][:100])  # the sequence survived too
    assert response.status_code == 200 and response.json() == {"seq": seqs[0] + 1, "paths": 100}
    health = tracker.get("/health").json()
    assert health["paths"] == 500 and health["holdings"] == 500
    assert health["database"]["schema_version"] == SCHEMA_VERSION[backend]
    assert_whole(tracker.db)


def test_a_crash_mid_announce_leaves_the_previous_set_whole(start_tracker) -> None:
    """SIGKILL while a large full announce is applied: after a restart the peer has the old set or the new one."""
    tracker = start_tracker()
    key = new_key()
    old, new, other = (random_hashes(count, random.Random(seed)) for seed, count in ((1, 1000), (2, 150_000),
                                                                                     (3, 150_000)))
    # Time an announce of the same size, to kill the real one late in its run: inside its transaction.
    started = time.monotonic()
    assert announce(tracker, new_key(), hashes=other).status_code == 200
    duration = time.monotonic() - started
    announce(tracker, key, hashes=old)

    thread = threading.Thread(target=_ignore_errors, args=(lambda: announce(tracker, key, hashes=new),))
    thread.start()
    time.sleep(duration * 0.75)
    tracker.stop(signal.SIGKILL)
    thread.join()

    assert_whole(tracker.db)
    tracker.start()
    count = peers(tracker)[peer_id(key)]["paths"]
    assert count in (1000, 150_000)
    expected, gone = (old, new) if count == 1000 else (new, old)
    assert len(batch(tracker, random.Random(4).sample(expected, 500))) == 500
    assert batch(tracker, random.Random(5).sample(gone, 500)) == {}
    health = tracker.get("/health").json()
    assert health["paths"] == health["holdings"] == 150_000 + count


def _ignore_errors(call) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass  # the tracker was killed under it


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL has had one schema version so far
def test_a_version_1_database_is_migrated_and_keeps_its_peers(start_tracker) -> None:
    """A database from before departures existed: the peers and sets survive the migration."""
    tracker = start_tracker()
    key, hashes = new_key(), random_hashes(5)
    announce(tracker, key, hashes=hashes)
    tracker.stop()
    with sqlite3.connect(tracker.db) as old:  # undo migration 2, as an older tracker left it
        old.execute("ALTER TABLE peers DROP COLUMN departed")
        old.execute("PRAGMA user_version = 1")
    tracker.start()
    assert holders(tracker, hashes[0]) == [peer_id(key)]
    assert tracker.get("/health").json()["database"]["schema_version"] == SCHEMA_VERSION["sqlite"] == 2
