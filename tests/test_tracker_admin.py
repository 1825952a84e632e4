"""`peerix-tracker admin` against a real tracker: list, purge, remove; refused without the admin token."""

import subprocess
import sys
from pathlib import Path

import httpx

from peerix.net.tracker_protocol import ADMIN_PEERS_PATH, peer_id

from conftest import ROOT
from trackertools import announce, error_of, holders, new_key, random_hashes


def admin(tracker, token_file: Path | None, *args: str) -> subprocess.CompletedProcess:
    options = ["--url", tracker.url] + (["--token-file", str(token_file)] if token_file else [])
    return subprocess.run([sys.executable, "-m", "tracker.cli", "admin", *options, *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_admin_lists_purges_and_removes(start_tracker, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("# rotated 2026-11\n\na-long-admin-token-0123456789\n")  # read as the tracker reads it
    token.chmod(0o600)
    tracker = start_tracker("--admin-token-file", str(token))
    alice, bob = new_key(), new_key()
    alice_hashes, bob_hashes = random_hashes(40), random_hashes(25)
    seq = announce(tracker, alice, name="alice", hashes=alice_hashes).json()["seq"]
    announce(tracker, bob, name="bob", hashes=bob_hashes)

    listing = admin(tracker, token, "peers")
    assert listing.returncode == 0, listing.stderr
    assert "alice" in listing.stdout and "bob" in listing.stdout and "40" in listing.stdout

    purged = admin(tracker, token, "purge", "alice")
    assert purged.returncode == 0 and "purged 40 paths of alice" in purged.stdout
    assert holders(tracker, alice_hashes[0]) == []
    delta = announce(tracker, alice, name="alice", since=seq, added=[], removed=[])
    assert delta.status_code == 409  # so alice sends its whole set again

    removed = admin(tracker, token, "remove", peer_id(bob)[:10])
    assert removed.returncode == 0 and "removed bob" in removed.stdout and "25 paths" in removed.stdout
    assert holders(tracker, bob_hashes[0]) == []
    assert "admin purge peer=" in tracker.log and "admin remove peer=" in tracker.log

    ambiguous = admin(tracker, token, "remove", "nobody")
    assert ambiguous.returncode == 2 and "no peers match 'nobody'" in ambiguous.stderr
    assert '"status"' in admin(tracker, token, "health").stdout


def test_admin_needs_the_token_and_is_off_without_one(start_tracker, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("a-long-admin-token-0123456789\n")
    token.chmod(0o600)
    tracker = start_tracker("--admin-token-file", str(token))
    assert error_of(httpx.get(tracker.url + ADMIN_PEERS_PATH)) == "unauthorized"
    wrong = httpx.get(tracker.url + ADMIN_PEERS_PATH, headers={"authorization": "Bearer a-long-admin-token-XXXX"})
    assert wrong.status_code == 401 and error_of(wrong) == "unauthorized"
    refused = admin(tracker, None, "peers")
    assert refused.returncode == 2 and "refused (401): no admin token" in refused.stderr
    (tmp_path / "wrong.token").write_text("a-long-admin-token-XXXX\n")
    (tmp_path / "wrong.token").chmod(0o600)
    mistaken = admin(tracker, tmp_path / "wrong.token", "peers")  # a different text for a different mistake
    assert mistaken.returncode == 2 and "refused (401): wrong admin token" in mistaken.stderr

    closed = start_tracker()
    response = httpx.get(closed.url + ADMIN_PEERS_PATH, headers={"authorization": "Bearer anything"})
    assert response.status_code == 403 and error_of(response) == "admin_disabled"
