"""Silent peers go offline (left out of lookups), then are removed with their hashes by the sweep."""

import time

from peerix.net.tracker_protocol import LOOKUP_PATH, PEERS_PATH

from trackertools import announce, error_of, new_key, random_hashes


def test_a_silent_peer_is_left_out_then_removed(start_tracker) -> None:
    tracker = start_tracker("--offline-after", "5s", "--remove-after", "8s", "--sweep-interval", "0.2s")
    silent, alive = new_key(), new_key()
    silent_id, alive_id = bytes(silent.verify_key).hex(), bytes(alive.verify_key).hex()
    shared, own = random_hashes(5), random_hashes(5)
    silent_seq = announce(tracker, silent, name="silent", hashes=shared + own).json()["seq"]
    alive_seq = announce(tracker, alive, name="alive", hashes=shared).json()["seq"]

    def holders(hash_part: str) -> list[str]:
        return [peer["peer_id"] for peer in tracker.get(f"{LOOKUP_PATH}/{hash_part}").json()["peers"]]

    def listed() -> dict[str, bool]:
        return {peer["peer_id"]: peer["online"] for peer in tracker.get(PEERS_PATH).json()["peers"]}

    def heartbeat() -> None:
        assert announce(tracker, alive, name="alive", since=alive_seq).json()["seq"] == alive_seq

    assert holders(shared[0]) == [alive_id, silent_id] and listed() == {silent_id: True, alive_id: True}

    time.sleep(3.0)  # wide margins: a loaded machine may take seconds between two requests
    heartbeat()
    time.sleep(2.2)  # silent: 5.2 s and more, over the offline TTL; alive: 2.2 s, with 2.8 s to spare
    assert holders(shared[0]) == [alive_id] and holders(own[0]) == []
    assert listed() == {silent_id: False, alive_id: True}
    health = tracker.get("/health").json()
    assert health["peers"] == {"online": 1, "offline": 1} and health["paths"] == 10
    assert tracker.metric("peerix_tracker_peers_offline") == 1

    deadline = time.monotonic() + 10
    while silent_id in listed() and time.monotonic() < deadline:
        heartbeat()
        time.sleep(0.2)
    assert listed() == {alive_id: True}
    health = tracker.get("/health").json()
    assert health["paths"] == 5 and health["holdings"] == 5  # the removed peer's hashes went with it
    assert health["sweep"]["status"] == "ok" and health["sweep"]["last_run"] > time.time() - 2
    assert tracker.metric("peerix_tracker_expired_peers_total") == 1
    assert f"peer expired peer={silent_id} name='silent' paths=10" in tracker.log

    # Coming back after removal: the delta is refused, the full set is accepted.
    response = announce(tracker, silent, name="silent", since=silent_seq)
    assert response.status_code == 409 and error_of(response) == "sequence_mismatch"
    assert announce(tracker, silent, name="silent", hashes=own).json()["paths"] == 5
    assert holders(own[0]) == [silent_id]
