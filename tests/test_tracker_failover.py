"""Daemons that fail over between tracker replicas: within a lookup's own request, keeping their delta
state, and end to end with real Nix on three hosts while one of two replicas is killed."""

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.net.tracker_client import PeerAddresses, TrackerClient, TrackerError
from peerix.net.tracker_protocol import unpack_hash
from peerix.nix import nix32

from conftest import free_port, requires_nix
from nixtools import HERE, build, hash_part, nix
from postgres import PostgresServer
from trackertools import assert_whole, query, random_hashes

FAST = ("--connect-timeout", "1", "--peer-timeout", "2", "--miss-ttl", "0.5")


def addresses(client: TrackerClient) -> PeerAddresses:
    return PeerAddresses(client.peer_id, ("127.0.0.1:4433",))


async def test_a_lookup_moves_to_the_next_tracker_within_its_request(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    owner = TrackerClient(tracker.url, os.urandom(32), tmp_path / "owner")
    hashes = random_hashes(10)
    await owner.announce(hashes, addresses(owner), "owner")
    client = TrackerClient([f"http://127.0.0.1:{free_port()}", tracker.url], os.urandom(32), tmp_path / "client")

    started = time.monotonic()
    assert [peer.name for peer in await client.lookup(hashes[0])] == ["owner"]  # the first one is dead
    assert time.monotonic() - started < 0.1
    assert client.url == tracker.url and not client.in_backoff
    started = time.monotonic()
    assert await client.lookup(random_hashes(1)[0]) == []  # a miss, straight from the one in use
    assert time.monotonic() - started < 0.1

    tracker.stop()  # now both are gone: one fast failure, then the client as a whole backs off
    with pytest.raises(TrackerError, match="unreachable"):
        await client.lookup(hashes[0])
    assert client.in_backoff
    with pytest.raises(TrackerError, match="backed off"):
        await client.lookup(hashes[0])
    await owner.aclose()
    await client.aclose()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_replica_answering_5xx_is_left_for_the_next(start_tracker, tracker_db, postgres: PostgresServer,
                                                            tmp_path: Path) -> None:
    """A replica that lost its database answers 503: the lookup goes on to the next tracker at once."""
    lost = tracker_db()
    failing, healthy = start_tracker(db=lost), start_tracker()
    owner = TrackerClient(healthy.url, os.urandom(32), tmp_path / "owner")
    hashes = random_hashes(5)
    await owner.announce(hashes, addresses(owner), "owner")
    database = urlsplit(lost).path[1:]
    postgres.psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")

    client = TrackerClient([failing.url, healthy.url], os.urandom(32), tmp_path / "client")
    assert [peer.name for peer in await client.lookup(hashes[0])] == ["owner"]
    assert failing.metric('peerix_tracker_http_requests_total{method="GET",route="lookup",status="503"}') == 1
    assert client.url == healthy.url
    await owner.aclose()
    await client.aclose()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_announces_move_to_the_next_replica_as_deltas(start_tracker, tracker_db, tmp_path: Path) -> None:
    """The sync state is the daemon's, not a replica's: after a replica dies, the next one gets a delta."""
    db = tracker_db()
    one, two = start_tracker(db=db), start_tracker(db=db)
    seed, state = os.urandom(32), tmp_path / "state"
    client = TrackerClient([one.url, two.url], seed, state)
    hashes, more = random_hashes(400), random_hashes(30)
    await client.announce(hashes, addresses(client), "host-a")
    one.stop(signal.SIGKILL)

    await client.announce(hashes[100:] + more, addresses(client), "host-a")
    assert client.url == two.url
    kinds = {kind: two.metric(f'peerix_tracker_announces_total{{kind="{kind}"}}') for kind in ("full", "delta")}
    assert kinds == {"full": 0, "delta": 1}
    assert two.metric('peerix_tracker_refusals_total{code="sequence_mismatch"}') == 0
    await client.aclose()

    restarted = TrackerClient([one.url, two.url], seed, state)  # the state file on disk serves every replica
    await restarted.announce(hashes[200:] + more, addresses(restarted), "host-a")
    assert two.metric('peerix_tracker_announces_total{kind="delta"}') == 2
    found = await restarted.peers()
    assert [(record.name, record.paths) for record in found] == [("host-a", 230)]
    await restarted.aclose()
    assert_whole(db)


def announceable(host: Host) -> set[str]:
    """The hash parts a host announces: its paths that carry a signature by the fleet's key."""
    data = json.loads(nix("path-info", "--json", "--all", "--store", str(host.store)).stdout)
    entries = data if isinstance(data, list) else [{"path": path, **info} for path, info in data.items()]
    key = host.fleet.cluster.name + ":"
    return {hash_part(entry["path"]) for entry in entries
            if any(sig.startswith(key) for sig in entry.get("signatures", []))}


def held(db: str) -> dict[str, set[str]]:
    """What the database holds: peer id -> hash parts."""
    found: dict[str, set[str]] = {}
    for key, packed in query(db, "SELECT p.key, x.hash FROM holdings h JOIN paths x ON x.id = h.path "
                                 "JOIN peers p ON p.id = h.peer"):
        found.setdefault(bytes(key).hex(), set()).add(unpack_hash(bytes(packed)))
    return found


def narinfo_miss(http: httpx.Client) -> float:
    """Seconds for a host to answer 404 to a path nobody has (on a kept-alive connection, as Nix asks)."""
    missing = "".join(random.choices(nix32.ALPHABET, k=32))
    started = time.monotonic()
    assert http.get(f"/{missing}.narinfo").status_code == 404
    return time.monotonic() - started


@requires_nix
@pytest.mark.parametrize("backend", ["postgresql"])
def test_daemons_fail_over_when_a_replica_is_killed(start_tracker, tracker_db, closure: Path,
                                                    tmp_path: Path) -> None:
    """Two replicas on one PostgreSQL database, three daemons with real Nix. One replica is killed while C's
    Nix substitutes and A and B announce new paths: every daemon moves to the other replica, the database
    ends up holding exactly what each daemon announces, Nix never sees a 5xx, and misses stay fast."""
    second = build(HERE / "nix" / "closure.nix", seed="failover-2")
    later = [build(HERE / "nix" / "closure.nix", seed=f"failover-later-{i}") for i in range(4)]
    db = tracker_db()
    one, two = start_tracker(db=db), start_tracker(db=db)
    fleet = LocalFleet(tmp_path)
    fleet.tracker_urls = [one.url, two.url]
    try:
        a, b, c = fleet.host("a"), fleet.host("b"), fleet.host("c")
        a.give(str(closure))
        b.give(str(second))
        for host in (a, b, c):
            host.start(*FAST)
        fleet.wait_announced(a, [str(closure)])
        fleet.wait_announced(b, [str(second)])

        nix_on_c = c.nix_realise(str(closure), str(second))
        giving = threading.Thread(target=lambda: [a.give(str(later[0])), b.give(str(later[1]))])
        giving.start()  # each gift is a new set, announced as a delta while the replica dies
        with httpx.Client(base_url=c.url, timeout=10) as http:
            narinfo_miss(http)
            time.sleep(0.5)
            one.stop(signal.SIGKILL)
            misses = [narinfo_miss(http) for _ in range(20)]
        giving.join()
        a.give(str(later[2]))  # and after it died: every daemon has a change to announce
        b.give(str(later[3]))
        stdout, stderr = nix_on_c.communicate(timeout=300)
        assert nix_on_c.returncode == 0, stderr

        assert max(misses) < 0.1, misses
        peers = {host.name: host.peer_id for host in (a, b, c)}
        wait_until(lambda: held(db) == {peers[host.name]: announceable(host) for host in (a, b, c)},
                   "the database to hold what every daemon announces", timeout=60)
        assert all(host.health()["network"]["tracker"]["url"] == two.url for host in (a, b, c))
        for host in (a, b, c):  # Nix was never answered with a 5xx
            assert not [line for line in httpx.get(host.url + "/metrics", timeout=5).text.splitlines()
                        if line.startswith("peerix_http_requests_total") and 'status="5' in line]
        assert "tracker failed, asking the next one" in c.log
        assert_whole(db)
    finally:
        fleet.close()
