"""The tracker's audit trail: membership changes, admin actions and refused writes, one JSON line each, in a
file that `peerix-tracker admin audit` reads; a flood of refused writes stays bounded."""

import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from peerix.net.tracker_protocol import ADMIN_PEERS_PATH, ANNOUNCE_PATH, PEERS_PATH, sign
from tracker.audit import GLOBAL_BURST, GLOBAL_RATE, REFUSALS_BURST, AuditTrail, admin_actor, fingerprint

from conftest import ROOT
from trackertools import announce, announcement, new_key, random_hashes, signed

ADMIN_TOKEN = "the-audit-test-admin-token"


def secret_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)
    return path


def events(path: Path) -> list[dict]:
    return [json.loads(line) for name in (path.name + ".1", path.name) if (path.parent / name).exists()
            for line in (path.parent / name).read_text().splitlines()]


def wait_for(check, what: str, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def admin_cli(tracker, token_file: Path, *args: str) -> str:  # noqa: ANN001 - trackertools.TrackerProcess
    result = subprocess.run([sys.executable, "-m", "tracker.cli", "admin", "--url", tracker.url, "--token-file",
                             str(token_file), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_membership_change_and_admin_action_is_in_the_trail_once(start_tracker, tmp_path: Path) -> None:
    p1, p2, p3 = (new_key() for _ in range(3))
    i1, i2, i3 = (bytes(key.verify_key).hex() for key in (p1, p2, p3))
    allowlist = tmp_path / "allowlist"
    allowlist.write_text(f"{i1}\n{i2}\n")
    admin_token = secret_file(tmp_path / "admin.token", ADMIN_TOKEN)
    trail = tmp_path / "trail" / "audit.jsonl"
    tracker = start_tracker("--allowlist-file", str(allowlist), "--admin-token-file", str(admin_token),
                            "--audit-file", str(trail))
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    for key in (p1, p2):
        assert announce(tracker, key, hashes=random_hashes(3)).status_code == 200
    seq = announce(tracker, p1, hashes=random_hashes(2)).json()["seq"]  # a member's later writes: no new line
    assert announce(tracker, p1, since=seq, added=[], removed=[]).status_code == 200
    assert announce(tracker, p1, since=seq - 1, added=[], removed=[]).status_code == 409  # not a refusal: a resync
    assert httpx.delete(f"{tracker.url}{ADMIN_PEERS_PATH}/{i1}", headers=admin).status_code == 200
    assert httpx.post(f"{tracker.url}{ADMIN_PEERS_PATH}/{i2}/purge", headers=admin).status_code == 200
    time.sleep(0.01)  # the trail's times have milliseconds: what follows is later than `since` by several
    since = time.time() - 0.005

    allowlist.write_text(f"{i1}\n{i3}\n")  # p2 leaves the allowlist, p3 joins it: read again on SIGHUP
    tracker.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any(event["event"] == "allowlist" for event in events(trail)), "the reload")
    assert announce(tracker, p2, hashes=[]).status_code == 403  # p2 may no longer write
    assert announce(tracker, p3, hashes=random_hashes(1)).status_code == 200
    assert signed(tracker, p3, "DELETE", f"{PEERS_PATH}/{i3}", {"forget": True}).status_code == 200

    tracker.stop()  # a restart records nothing new; a change made while it was down is recorded at start
    allowlist.write_text(f"{i1}\n{i2}\n{i3}\n")
    tracker.start()

    actor = admin_actor(ADMIN_TOKEN)
    seen = collections.Counter((e["actor"], e["event"], e.get("peer"), e.get("reason")) for e in events(trail))
    assert seen == {
        ("tracker", "state", None, None): 1,
        (f"peer:{i1}", "joined", i1, None): 1, (f"peer:{i2}", "joined", i2, None): 1,
        (actor, "removed", i1, None): 1, (actor, "purged", i2, None): 1,
        ("admin", "allowlist", None, None): 2,
        ("tracker", "left", i2, "not on the allowlist"): 1,
        ("client:127.0.0.1", "refused", None, None): 1,
        (f"peer:{i3}", "joined", i3, None): 1, (f"peer:{i3}", "left", i3, "deregistered"): 1,
    }, seen
    changes = [(e["added"], e["removed"]) for e in events(trail) if e["event"] == "allowlist"]
    assert changes == [([i3], [i2]), ([i2], [])]
    refused = next(e for e in events(trail) if e["event"] == "refused")
    assert (refused["status"], refused["code"], refused["path"]) == (403, "not_member", ANNOUNCE_PATH)

    printed = admin_cli(tracker, admin_token, "audit").splitlines()
    assert len(printed) == len(events(trail)) and "  removed  " in printed[3] and f"peer={i1}" in printed[3]
    recent = [json.loads(line) for line in admin_cli(tracker, admin_token, "audit", "--since", str(since),
                                                     "--json").splitlines()]
    assert [e["event"] for e in recent] == ["allowlist", "left", "refused", "joined", "left", "allowlist"]


@pytest.mark.parametrize("backend", ["sqlite"])  # the trail is the process's, whatever the storage
def test_a_flood_of_refused_writes_stays_bounded(start_tracker, tmp_path: Path) -> None:
    """Two floods: a wrong token from one client, and writes refused after their signatures checked out from
    300 distinct peers. The trail keeps a few lines of each and counts the rest: it stays well under its size
    limit, so what came before is still there (unlimited, the floods' 500 lines would have rotated it out). A
    token rotation shows fingerprints, never the tokens."""
    token, new_token = "the-audit-test-network-token", "the-rotated-network-token"
    tokens = secret_file(tmp_path / "tokens", token)
    admin_token = secret_file(tmp_path / "admin.token", ADMIN_TOKEN)
    trail = tmp_path / "audit.jsonl"
    limit = 64 << 10
    tracker = start_tracker("--token-file", str(tokens), "--admin-token-file", str(admin_token), "--audit-file",
                            str(trail), "--audit-max-size", "64K", env={"JOURNAL_STREAM": "8:4242"})  # as systemd
    bearer = {"authorization": f"Bearer {token}"}
    member = new_key()
    assert announce(tracker, member, headers=bearer, hashes=random_hashes(2)).status_code == 200
    member_id = bytes(member.verify_key).hex()
    assert httpx.delete(f"{tracker.url}{ADMIN_PEERS_PATH}/{member_id}",
                        headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200

    started = time.monotonic()
    forgeries = asyncio.run(_flood(tracker.url, [new_key() for _ in range(300)], bearer, wrong_token=200))
    elapsed = time.monotonic() - started
    assert forgeries == {403: 500}  # not_member (a wrong token), forbidden (another's name)

    refused = [e for e in events(trail) if e["event"] == "refused"]
    from_client = [e for e in refused if e["actor"] == "client:127.0.0.1"]
    assert len(from_client) == REFUSALS_BURST
    assert GLOBAL_BURST - REFUSALS_BURST <= len(refused) - len(from_client) <= GLOBAL_BURST + elapsed * GLOBAL_RATE
    assert tracker.metric("peerix_tracker_audit_suppressed_total") == 500 - len(refused)
    assert trail.stat().st_size < limit and not (tmp_path / "audit.jsonl.1").exists()
    assert [e["event"] for e in events(trail)][:3] == ["state", "joined", "removed"]  # not pushed out
    journal = [line for line in tracker.log.splitlines() if line.startswith('{"time"')]  # stdout, for journald
    assert journal == trail.read_text().splitlines()

    secret_file(tmp_path / "tokens", new_token, token)
    tracker.process.send_signal(signal.SIGHUP)
    wait_for(lambda: events(trail)[-1]["event"] == "tokens", "the reload")
    assert events(trail)[-1]["added"] == [fingerprint(new_token)] and events(trail)[-1]["removed"] == []
    assert token not in trail.read_text() and new_token not in trail.read_text()


async def _flood(url: str, keys: list, bearer: dict[str, str], wrong_token: int) -> collections.Counter:
    """`wrong_token` announces with a wrong network token, and one announce per key in another peer's name
    (refused once its signature checked out); the count of answers by status. Eight clients at once."""
    other = bytes(new_key().verify_key).hex()
    body = json.dumps(announcement(hashes=[]) | {"addresses": {"endpoint_id": other}}).encode()
    guesser, guess = new_key(), {"authorization": "Bearer a-guessed-network-token"}
    work = [(guesser, guess)] * wrong_token + [(key, bearer) for key in keys]
    statuses: collections.Counter = collections.Counter()

    async def client(share: list) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for key, headers in share:
                response = await http.post(ANNOUNCE_PATH, content=body,
                                           headers={**sign(key, "POST", ANNOUNCE_PATH, body), **headers})
                statuses[response.status_code] += 1

    await asyncio.gather(*(client(work[i::8]) for i in range(8)))
    return statuses


def test_the_file_rotates_at_its_size_limit_and_reads_across_both(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, 4096)
    trail.open()
    trail.membership("allowlist", ["a" * 64], [], actor="admin")
    for number in range(200):
        trail.record("admin:x", "removed", peer=f"{number:064x}")
    trail.close()
    rotated = path.with_name("audit.jsonl.1")
    assert 0 < path.stat().st_size <= 4096 and 0 < rotated.stat().st_size <= 4096
    for file in (path, rotated):
        assert json.loads(file.read_text().splitlines()[0])["event"] == "state"  # each readable on its own
    read = trail.read(None, 10_000)
    removed = [int(event["peer"], 16) for event in read if event["event"] == "removed"]
    assert removed == list(range(removed[0], 200)) and removed[0] > 0  # the oldest went with the rotations
    assert trail.read(None, 5)[-1]["peer"] == f"{199:064x}" and len(trail.read(None, 5)) == 5

    again = AuditTrail(path, 4096)  # a restart: the state is read back from the file
    again.open()
    again.membership("allowlist", ["a" * 64], [], actor="admin")
    again.membership("allowlist", ["a" * 64, "b" * 64], [], actor="admin")
    again.close()
    changes = [event for event in again.read(None, 10_000) if event["event"] == "allowlist"]
    assert [(event["added"], event["removed"]) for event in changes] == [(["b" * 64], [])]
