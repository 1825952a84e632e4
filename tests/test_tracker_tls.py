"""TLS to the tracker: `peerix-tracker serve --tls-cert --tls-key` serves HTTPS, and a daemon verifies the
certificate (its `tracker_ca_file`): a valid chain works; a certificate from another CA, or for another
host, fails with one clear line, and the tracker receives nothing, the token included."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tlstools import CertificateAuthority, why_no_openssl

from peerix.net.tracker_client import TrackerClient

from conftest import ROOT, offline

pytestmark = pytest.mark.skipif(why_no_openssl() is not None, reason=why_no_openssl() or "")
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])  # TLS is the HTTP server's, whatever the storage
TOKEN = "a-network-token-for-the-tls-test"


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    ca, other_ca = CertificateAuthority(tmp_path / "ca", "fleet-ca"), CertificateAuthority(tmp_path / "other", "other")
    cert, key = ca.issue("tracker", "DNS:localhost", "IP:127.0.0.1")
    wrong_name_cert, wrong_name_key = ca.issue("elsewhere", "DNS:tracker.elsewhere.example")
    wrong_ca_cert, wrong_ca_key = other_ca.issue("impostor", "DNS:localhost", "IP:127.0.0.1")
    token = tmp_path / "network.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return {"ca": ca.cert, "cert": cert, "key": key, "wrong_name": (wrong_name_cert, wrong_name_key),
            "wrong_ca": (wrong_ca_cert, wrong_ca_key), "token": token}


def _api_requests(tracker) -> list[str]:  # noqa: ANN001 - trackertools.TrackerProcess
    """The API requests the tracker's access log shows (the harness itself only asks /health)."""
    return [line for line in tracker.log.splitlines() if '"GET /api/' in line or '"POST /api/' in line
            or '"DELETE /api/' in line]


@sqlite_only
def test_a_daemon_uses_a_tracker_whose_certificate_chains_to_its_ca(start_tracker, start_daemon, pki,
                                                                    tmp_path: Path) -> None:
    admin_token = tmp_path / "admin.token"
    admin_token.write_text("an-admin-token-of-the-tls-test\n")
    admin_token.chmod(0o600)
    tracker = start_tracker("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--token-file",
                            str(pki["token"]), "--admin-token-file", str(admin_token), https=pki["ca"])
    assert tracker.url.startswith("https://")
    assert tracker.get("/health").json()["status"] == "ok"
    daemon = start_daemon("serve", *offline(tmp_path / "d"), "--tracker", tracker.url, "--tracker-ca-file",
                          str(pki["ca"]), "--tracker-token-file", str(pki["token"]), "--name", "tls-daemon")
    peer_id = daemon_health(daemon)["network"]["peer_id"]

    def listed() -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "tracker.cli", "admin", "--url", tracker.url, "--ca-file",
                                 str(pki["ca"]), "--token-file", str(admin_token), "peers", "--json"],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    wait(lambda: any(peer["peer_id"] == peer_id for peer in listed()), "the daemon's announce over TLS")
    assert daemon_health(daemon)["network"]["tracker"]["last_error"] is None
    assert "tracker certificate" not in daemon.log
    # Without the CA the admin command does not trust the tracker either: one line, status 2.
    refused = subprocess.run([sys.executable, "-m", "tracker.cli", "admin", "--url", tracker.url, "--token-file",
                              str(admin_token), "peers"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr


@sqlite_only
def test_a_certificate_that_does_not_check_out_is_one_line_and_nothing_sent(start_tracker, start_daemon, pki,
                                                                              tmp_path: Path) -> None:
    """Two replicas: one shows a certificate from another CA, the other one for another host name. The
    daemon tries each, says why in one line each, and sends neither a byte of a request, nor its token."""
    trackers = [start_tracker("--tls-cert", str(pki[case][0]), "--tls-key", str(pki[case][1]), "--token-file",
                              str(pki["token"]), "--access-log", https=True) for case in ("wrong_ca", "wrong_name")]
    daemon = start_daemon("serve", *offline(tmp_path / "d"), "--tracker", trackers[0].url, "--tracker",
                          trackers[1].url, "--tracker-ca-file", str(pki["ca"]), "--tracker-token-file",
                          str(pki["token"]))
    wait(lambda: daemon.log.count("tracker certificate rejected") >= 2, "the daemon to refuse both certificates")
    time.sleep(0.5)  # the announce and the member list, started together, would each have said it again by now
    lines = [line for line in daemon.log.splitlines() if "tracker certificate" in line]
    assert len(lines) == 2, lines
    for line, tracker, reason in zip(lines, trackers, ("unable to get local issuer certificate",
                                                       "IP address mismatch"), strict=True):
        assert f"tracker={tracker.url}" in line and reason in line and "nothing was sent" in line, line
        assert "ERROR" in line
        assert _api_requests(tracker) == []  # not a request reached it: the token never left the daemon
    assert TOKEN not in daemon.log
    assert daemon_health(daemon)["network"]["tracker"]["in_backoff"]


def test_plain_http_to_a_remote_tracker_under_closed_membership_warns_once(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    remote = TrackerClient(["http://192.0.2.10:12305", "https://192.0.2.11:12305", "http://127.0.0.1:12305"],
                           bytes(32), tmp_path)  # made, never asked: nothing is sent
    remote.warn_plain_http()
    remote.warn_plain_http()
    warnings = [r.getMessage() for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(warnings) == 1 and "192.0.2.10" in warnings[0], warnings


def daemon_health(daemon) -> dict:  # noqa: ANN001 - conftest.Daemon
    return httpx.get(daemon.url + "/health", timeout=5).json()


def wait(check, what: str, timeout: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
