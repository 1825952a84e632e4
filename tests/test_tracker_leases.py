"""Leases: the tracker grants one online peer at a time the right to fetch a path from the upstream,
names it to the others, lets it renew and release, and hands the lease on once it runs out, on both
storages and across replicas."""

import time

import httpx

from peerix.net.tracker_protocol import LEASES_PATH

from trackertools import announce, error_of, new_key, random_hashes, signed

UNLIMITED_LEASES = ("--lease-rate", "100000", "--lease-burst", "100000")


def lease(tracker, key, hash_part: str):  # noqa: ANN001, ANN201
    return signed(tracker, key, "POST", f"{LEASES_PATH}/{hash_part}")


def test_one_peer_at_a_time_holds_a_path_and_the_others_are_told_who(start_tracker) -> None:
    tracker = start_tracker("--lease-ttl", "1500ms", *UNLIMITED_LEASES)
    first, second = new_key(), new_key()
    for key, name in ((first, "first"), (second, "second")):
        assert announce(tracker, key, name=name, hashes=random_hashes(3)).status_code == 200
    wanted = random_hashes(1)[0]
    taken = lease(tracker, first, wanted).json()
    assert taken["granted"] and taken["holder"] is None and taken["ttl"] == 1.5
    held = lease(tracker, second, wanted).json()
    assert not held["granted"] and held["holder"]["peer_id"] == bytes(first.verify_key).hex()
    assert held["holder"]["addresses"]["direct"] == ["127.0.0.1:4433"] and held["until"] == taken["until"]
    renewed = lease(tracker, first, wanted).json()
    assert renewed["granted"] and renewed["until"] > taken["until"]
    # A release hands it on at once; a lease left to run out, after its time to live.
    assert signed(tracker, second, "DELETE", f"{LEASES_PATH}/{wanted}").json()["released"] is False
    assert signed(tracker, first, "DELETE", f"{LEASES_PATH}/{wanted}").json()["released"] is True
    assert lease(tracker, second, wanted).json()["granted"]
    assert not lease(tracker, first, wanted).json()["granted"]
    time.sleep(1.7)
    assert lease(tracker, first, wanted).json()["granted"]
    assert tracker.metric('peerix_tracker_leases_total{result="granted"}') >= 4
    # Done: the holder's copy is whole, so it is named for three TTLs while its announce is on its way.
    done = signed(tracker, first, "POST", f"{LEASES_PATH}/{wanted}?done=1").json()
    assert done["granted"] and done["until"] - time.time() > 4
    time.sleep(1.7)
    assert lease(tracker, second, wanted).json()["holder"]["peer_id"] == bytes(first.verify_key).hex()


def test_only_an_announced_peer_may_hold_a_lease_and_bad_requests_are_refused(start_tracker) -> None:
    tracker = start_tracker(*UNLIMITED_LEASES)
    stranger, hash_part = new_key(), random_hashes(1)[0]
    refused = lease(tracker, stranger, hash_part)
    assert refused.status_code == 409 and error_of(refused) == "not_announced"
    announce(tracker, stranger, name="known", hashes=[])
    assert lease(tracker, stranger, hash_part).json()["granted"]
    assert error_of(lease(tracker, stranger, "not-a-hash")) == "invalid_hash"
    unsigned = httpx.post(f"{tracker.url}{LEASES_PATH}/{hash_part}", timeout=10)
    assert unsigned.status_code == 401 and error_of(unsigned) == "unauthenticated"


def test_lease_requests_have_a_rate_of_their_own(start_tracker) -> None:
    tracker = start_tracker("--lease-rate", "1", "--lease-burst", "3")
    key = new_key()
    announce(tracker, key, name="busy", hashes=[])
    answers = [lease(tracker, key, hash_part).status_code for hash_part in random_hashes(6)]
    assert answers[:3] == [200] * 3 and 429 in answers[3:]
    assert announce(tracker, key, name="busy", hashes=[]).status_code == 200  # writes have their own budget


def test_replicas_agree_on_who_holds_a_lease(start_tracker, backend: str, tracker_db) -> None:
    if backend != "postgresql":
        return  # SQLite is one process: there are no replicas to agree
    db = tracker_db("shared")
    one, two = start_tracker(*UNLIMITED_LEASES, db=db), start_tracker(*UNLIMITED_LEASES, db=db)
    first, second = new_key(), new_key()
    announce(one, first, name="first", hashes=[])
    announce(two, second, name="second", hashes=[])
    wanted = random_hashes(1)[0]
    assert lease(one, first, wanted).json()["granted"]
    assert lease(two, second, wanted).json()["holder"]["name"] == "first"
