"""Several `peerix-tracker serve` replicas on one PostgreSQL database: any replica answers any request,
delta sync stays exact, migrations and sweeps happen once, and the database's failures are 503s."""

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from peerix.net.tracker_client import PeerAddresses, TrackerClient
from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, PEERS_PATH, sign
from tracker.postgres import LOCK_CLASS, SCHEMA_VERSION, SWEEP_LOCK

from conftest import ROOT
from postgres import PASSWORD_USER, PostgresServer
from trackertools import (
    TrackerProcess,
    announce,
    announcement,
    assert_whole,
    holders,
    new_key,
    query,
    random_hashes,
    signed,
)


@pytest.fixture
def backend() -> str:
    return "postgresql"  # replicas share a PostgreSQL database


def peer_id(key) -> str:
    return bytes(key.verify_key).hex()


def test_any_replica_answers_any_request(start_tracker, tracker_db) -> None:
    db = tracker_db()
    one, two = start_tracker("--replica", "one", db=db), start_tracker("--replica", "two", db=db)
    key, other = new_key(), new_key()
    first, more = random_hashes(300), random_hashes(20)
    seq = announce(one, key, name="builder", hashes=first).json()["seq"]
    announce(two, other, name="laptop", hashes=first[:10])
    assert holders(two, first[200]) == [peer_id(key)]
    response = announce(two, key, name="builder", since=seq, added=more, removed=first[:100])  # a delta elsewhere
    assert response.status_code == 200 and response.json() == {"seq": seq + 1, "paths": 220}
    assert holders(one, more[0]) == [peer_id(key)] and holders(one, first[0]) == [peer_id(other)]
    assert holders(one, first[50]) == []
    assert signed(one, key, "DELETE", f"{PEERS_PATH}/{peer_id(key)}").status_code == 200  # seen by the other
    assert holders(two, first[200]) == []

    # Counts come from the database: every replica tells the same; the counters are each replica's own.
    for tracker in (one, two):
        health = tracker.get("/health").json()
        assert (health["peers"], health["paths"], health["holdings"]) == ({"online": 1, "offline": 1}, 230, 230)
        assert tracker.metric("peerix_tracker_peers_offline") == 1 and tracker.metric("peerix_tracker_holdings") == 230
        page = tracker.get("/").text
        assert re.search(r'id="holdings"[^>]*>230<', page) and "laptop" in page and "builder" in page
    assert one.metric('peerix_tracker_announces_total{kind="full"}') == 1
    assert two.metric('peerix_tracker_announces_total{kind="full"}') == 1
    assert two.metric('peerix_tracker_announces_total{kind="delta"}') == 1
    scrape = two.get("/metrics").text
    assert 'peerix_tracker_announces_total{kind="delta",replica="two"} 1.0' in scrape
    assert "peerix_tracker_holdings 230.0" in scrape  # the database's: no replica label
    assert health["replica"] == "two" and "replica two" in two.get("/").text
    assert_whole(db)


def test_a_write_replayed_to_another_replica_is_refused(start_tracker, tracker_db) -> None:
    """The replay cache is the database's: a captured announce replayed at another replica is refused, so
    it cannot put back a set the peer has since changed."""
    db = tracker_db()
    one, two = start_tracker(db=db), start_tracker(db=db)
    key, old, new = new_key(), random_hashes(5), random_hashes(5)
    body = json.dumps(announcement(hashes=old)).encode()
    captured = sign(key, "POST", ANNOUNCE_PATH, body)
    assert signed(one, key, "POST", ANNOUNCE_PATH, body=body, headers=captured).status_code == 200
    assert announce(one, key, hashes=new).status_code == 200
    replay = signed(two, key, "POST", ANNOUNCE_PATH, body=body, headers=captured)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
    assert holders(two, new[0]) == [peer_id(key)] and holders(two, old[0]) == []


def test_two_replicas_cannot_both_accept_the_same_since(start_tracker, tracker_db) -> None:
    """The same delta base sent to both replicas at once: one applies, the other answers 409, every time."""
    db = tracker_db()
    replicas = [start_tracker(db=db), start_tracker(db=db)]
    key = new_key()
    accepted: list[str] = []
    seq = announce(replicas[0], key, hashes=random_hashes(1000)).json()["seq"]
    for _ in range(30):
        changes = [random_hashes(50) for _ in replicas]
        start = threading.Barrier(len(replicas))

        def send(i: int) -> httpx.Response:
            start.wait()
            return announce(replicas[i], key, since=seq, added=changes[i])

        with ThreadPoolExecutor(len(replicas)) as pool:
            answers = list(pool.map(send, range(len(replicas))))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200, 409], [answer.text for answer in answers]
        winner = next(i for i, answer in enumerate(answers) if answer.status_code == 200)
        assert answers[winner].json()["seq"] == seq + 1
        seq += 1
        accepted += changes[winner]
    held = {row[0] for row in query(db, "SELECT x.hash FROM paths x JOIN holdings h ON h.path = x.id")}
    assert len(held) == 1000 + len(accepted) and all(holders(replicas[1], h) == [peer_id(key)] for h in accepted[:20])
    assert_whole(db)


def test_replicas_starting_together_migrate_once(start_tracker, tracker_db) -> None:
    db = tracker_db()
    with ThreadPoolExecutor(3) as pool:
        replicas = list(pool.map(lambda _: start_tracker(db=db), range(3)))
    assert all(replica.get("/health").json()["database"]["schema_version"] == SCHEMA_VERSION for replica in replicas)
    assert [row[0] for row in query(db, "SELECT version FROM schema_version")] == list(range(1, SCHEMA_VERSION + 1))
    assert sum(replica.log.count("database migrated") for replica in replicas) == SCHEMA_VERSION


def test_one_replica_sweeps_at_a_time(start_tracker, tracker_db, postgres: PostgresServer) -> None:
    db = tracker_db()
    fast = ("--offline-after", "0.5s", "--remove-after", "1s", "--sweep-interval", "0.1s")
    replicas = [start_tracker(*fast, db=db), start_tracker(*fast, db=db)]
    silent = new_key()
    announce(replicas[0], silent, name="silent", hashes=random_hashes(5))

    # While the sweep's lock is held elsewhere, neither replica sweeps: both count their rounds as skipped.
    holder = subprocess.Popen([str(postgres.bin / "psql"), "-X", "-q", "-d", db, "-c",
                               f"SELECT pg_advisory_lock({LOCK_CLASS}, {SWEEP_LOCK}); SELECT pg_sleep(2.5)"],
                              stdout=subprocess.DEVNULL)
    try:
        time.sleep(2)  # the peer has been silent for longer than remove_after
        assert [peer["name"] for peer in replicas[1].get(PEERS_PATH).json()["peers"]] == ["silent"]
        assert all(replica.metric('peerix_tracker_sweeps_total{result="skipped"}') > 0 for replica in replicas)
    finally:
        holder.wait(10)
    deadline = time.monotonic() + 10
    while replicas[1].get(PEERS_PATH).json()["peers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert replicas[1].get(PEERS_PATH).json()["peers"] == []
    assert sum(replica.log.count("peer expired") for replica in replicas) == 1
    assert sum(replica.metric("peerix_tracker_expired_peers_total") for replica in replicas) == 1
    assert all(replica.get("/health").json()["sweep"]["status"] == "ok" for replica in replicas)


def test_a_database_restart_is_503s_then_recovery(start_tracker, tracker_db, postgres: PostgresServer) -> None:
    """PostgreSQL stops and starts again: meanwhile every answer is a prompt 503, never a hang; afterwards the
    same replica answers again without being restarted."""
    tracker = start_tracker()
    key, hashes = new_key(), random_hashes(50)
    seq = announce(tracker, key, hashes=hashes).json()["seq"]
    assert holders(tracker, hashes[0]) == [peer_id(key)]

    postgres.run_server("stop")
    try:
        for request in (lambda: httpx.get(f"{tracker.url}{LOOKUP_PATH}/{hashes[0]}", timeout=10),
                        lambda: httpx.post(tracker.url + LOOKUP_PATH, json={"hashes": hashes}, timeout=10),
                        lambda: announce(tracker, key, since=seq),
                        lambda: tracker.get(PEERS_PATH)):
            started = time.monotonic()
            response = request()
            assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable", response.text
            assert time.monotonic() - started < 3
        health = tracker.get("/health")
        assert health.status_code == 503 and health.json()["database"]["status"] == "error"
        assert tracker.metric("peerix_tracker_database_up") == 0
    finally:
        postgres.run_server("start")
    assert holders(tracker, hashes[0]) == [peer_id(key)]
    assert announce(tracker, key, since=seq).status_code == 200
    assert tracker.get("/health").json()["status"] in ("ok", "degraded")  # the sweep may have failed meanwhile
    assert tracker.metric("peerix_tracker_database_up") == 1
    assert "database failed route=lookup" in tracker.log and "Traceback" not in tracker.log


def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker.cli", "serve", "--listen", "127.0.0.1:1", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})})


def test_a_database_it_cannot_use_is_refused(tracker_db, postgres: PostgresServer, tmp_path: Path) -> None:
    newer = tracker_db()
    started = TrackerProcess(newer, tmp_path / "newer.log")  # creates the schema
    started.stop()
    query(newer, "INSERT INTO schema_version (version, tracker) VALUES (99, 'future')")
    result = serve("--db", newer)
    assert result.returncode == 2 and "schema version 99, newer" in result.stderr

    foreign = tracker_db()
    query(foreign, "CREATE TABLE peers (name text)")  # someone else's database
    result = serve("--db", foreign)
    assert result.returncode == 2 and "peerix tracker database" in result.stderr and "Traceback" not in result.stderr

    nowhere = f"postgresql://postgres@/db1?host={tmp_path}"  # no server listens there
    result = serve("--db", nowhere)
    assert result.returncode == 2 and "cannot connect" in result.stderr and "Traceback" not in result.stderr


def test_the_password_comes_from_a_file(postgres: PostgresServer, tmp_path: Path) -> None:
    postgres.create_password_role("right-horse-battery")
    url = postgres.create_database(owner=PASSWORD_USER)
    assert PASSWORD_USER in url and "right-horse" not in url
    password = tmp_path / "db-password"
    password.write_text("right-horse-battery\n")
    password.chmod(0o600)
    tracker = TrackerProcess(url, tmp_path / "tracker.log", ("--db-password-file", str(password)))
    try:
        key, hashes = new_key(), random_hashes(3)
        assert announce(tracker, key, hashes=hashes).status_code == 200
        assert holders(tracker, hashes[0]) == [peer_id(key)]
    finally:
        tracker.stop()

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:{PASSWORD_USER}:right-horse-battery\n")
    pgpass.chmod(0o600)
    tracker = TrackerProcess(url, tmp_path / "tracker.log", env={"PGPASSFILE": str(pgpass)})
    try:
        assert tracker.get("/health").json()["status"] == "ok"
    finally:
        tracker.stop()

    password.write_text("wrong-horse\n")
    result = serve("--db", url, "--db-password-file", str(password))
    assert result.returncode == 2 and "password authentication failed" in result.stderr
    assert "wrong-horse" not in result.stderr
    password.chmod(0o644)
    result = serve("--db", url, "--db-password-file", str(password))
    assert result.returncode == 2 and "readable by everyone" in result.stderr
    result = serve("--db", url.replace(f"{PASSWORD_USER}@", f"{PASSWORD_USER}:right-horse-battery@"))
    assert result.returncode == 2 and "password does not go in the URL" in result.stderr
    assert "right-horse" not in result.stderr


async def test_switching_backends_peers_resync_on_their_own(start_tracker, tmp_path: Path) -> None:
    """From SQLite to PostgreSQL (or back): the new database holds nothing, so each daemon's next delta or
    heartbeat meets a 409 and it announces its full set. Nothing needs copying."""
    old = start_tracker(db=tmp_path / "old.db")
    client = TrackerClient(old.url, os.urandom(32), tmp_path / "state")
    addresses = PeerAddresses(client.peer_id, ("127.0.0.1:4433",))
    hashes = random_hashes(500)
    await client.announce(hashes, addresses, "host-a")

    new = start_tracker()  # PostgreSQL
    old.stop()
    new.stop()
    new.port, new.url = old.port, old.url  # the same address, now served from PostgreSQL
    new.start()
    await client.heartbeat()  # the daemon's next heartbeat: 409, then its set in full
    assert new.metric('peerix_tracker_refusals_total{code="sequence_mismatch"}') == 1
    assert new.metric('peerix_tracker_announces_total{kind="full"}') == 1
    observer = TrackerClient(new.url, os.urandom(32), tmp_path / "observer")
    found = await observer.lookup_many(hashes)
    assert all([peer.peer_id for peer in peers] == [client.peer_id] for peers in found.values())
    await client.announce(hashes[100:], addresses, "host-a")  # and deltas from then on
    assert new.metric('peerix_tracker_announces_total{kind="delta"}') == 1
    await asyncio.gather(client.aclose(), observer.aclose())
