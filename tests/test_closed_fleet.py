"""Closed fleets: a daemon under `peers = fleet` answers its fleet only. Real daemons, a real tracker, real
Nix, and a stranger that is a real iroh endpoint with a fresh key asking over the peer protocols."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nacl.signing
import pytest

from peerix.cli.localfleet import Host, LocalFleet
from peerix.net import wire
from peerix.net.endpoint import EndpointAddress, EndpointSettings, PeerEndpoint
from peerix.net.tracker_protocol import ADMIN_PEERS_PATH, ANNOUNCE_PATH, sign
from peerix.swarm.admission import RECHECK_EVERY, Admission
from peerix.telemetry.metrics import Metrics

from conftest import ROOT, requires_nix
from nixtools import hash_part, path_info

pytestmark = requires_nix


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


class Stranger:
    """An iroh endpoint of its own key that asks a daemon directly, as any node that learned its id could."""

    def __init__(self, seed: bytes | None = None) -> None:
        self.key = nacl.signing.SigningKey(seed) if seed else nacl.signing.SigningKey.generate()
        self.peer_id = bytes(self.key.verify_key).hex()

    async def ask(self, host: Host, alpn: bytes, request: bytes) -> dict:
        network = host.health()["network"]
        target = EndpointAddress(network["peer_id"], tuple(network["direct_addresses"]))
        endpoint = await PeerEndpoint.start(bytes(self.key), EndpointSettings(
            bind="127.0.0.1:0", relays=False, discovery=False, connect_timeout=5), {})
        try:
            _, answer = await endpoint.request(target, alpn, request, wire.read_frame)
            return answer
        finally:
            await endpoint.close()

    def narinfo(self, host: Host, path: Path) -> dict:
        return asyncio.run(self.ask(host, wire.NARINFO_ALPN, wire.encode_frame({"hash": hash_part(path)})))

    def nar(self, host: Host, path: Path) -> dict:
        nar_hash = path_info(path)[str(path)]["narHash"].removeprefix("sha256:")
        return asyncio.run(self.ask(host, wire.NAR_ALPN, wire.NarRequest(hash_part(path), nar_hash).to_frame()))


def admission(host: Host) -> dict:
    return host.health()["network"]["admission"]


def wait(check, what: str, timeout: float = 30, interval: float = 0.05) -> float:  # noqa: ANN001
    """Seconds until `check()` is true."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


@pytest.mark.parametrize("setting, fleet_token, tracker_token, membership, mode", [
    (None, False, False, None, "any"),  # no tracker answer yet, nothing closed
    (None, False, False, "open", "any"),
    (None, False, False, "allowlist", "fleet"),
    (None, False, False, "token", "fleet"),
    (None, False, True, None, "fleet"),  # a tracker that wants a token is closed before it says so
    (None, True, False, "open", "fleet"),
    ("any", True, True, "token", "any"),  # a setting wins
    ("fleet", False, False, "open", "fleet"),
])
def test_the_default_is_fleet_when_the_tracker_is_closed_or_a_fleet_token_is_held(
        setting: str | None, fleet_token: bool, tracker_token: bool, membership: str | None, mode: str) -> None:
    admission = Admission(setting, Metrics(), fleet_token=fleet_token, tracker_token=tracker_token)
    if membership is not None:
        admission.update(membership, frozenset(), "v1")
    assert admission.mode == mode


def test_the_member_list_is_kept_across_restarts(tmp_path: Path) -> None:
    """A restarted daemon answers its fleet at once, from the list it last had, before the tracker answers."""
    member, stranger = "a" * 64, "b" * 64
    state = tmp_path / "fleet-members.json"
    Admission(None, Metrics(), state_file=state).update("allowlist", frozenset({member}), "v1")
    restarted = Admission(None, Metrics(), state_file=state)
    assert restarted.mode == "fleet"
    assert restarted.admitted_by(member) == "tracker" and restarted.admitted_by(stranger) is None


def test_a_stranger_gets_not_found_from_a_fleet_daemon_while_a_member_gets_the_path(tmp_path: Path,
                                                                                   closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    token = secret_file(tmp_path / "network.token", "the-fleet-network-token-1")
    try:
        fleet.start_tracker("--token-file", str(token))
        a, b = fleet.host("a"), fleet.host("b")
        a.give(str(closure))  # a private build, signed by the fleet's key: shared by default with the fleet
        for host in (a, b):
            host.start("--tracker-token-file", str(token), "--fleet-sync", "0.5")
        assert admission(a)["mode"] == "fleet" and admission(a)["setting"] == "auto"  # token membership: closed
        wait(lambda: admission(a)["tracker_members"] == 2, "a to list both members")

        stranger = Stranger()
        assert stranger.narinfo(a, closure) == {"status": "not-found"}
        assert stranger.nar(a, closure) == {"status": "not-found"}
        assert a.metric('peerix_peers_refused_total{alpn="/peerix/narinfo/1"}') == 1
        assert a.metric('peerix_peers_refused_total{alpn="/peerix/nar/1"}') == 1
        assert "refused peer=" + stranger.peer_id[:10] in a.log

        b.realise(str(closure))  # real Nix on b, through b's peerix, from a: a member is answered
        assert "served nar" in a.log
        assert a.metric('peerix_peers_refused_total{alpn="/peerix/narinfo/1"}') == 1

        peers = cli(b, "peers")
        assert "ANSWERED" in peers and "yes (tracker)" in peers
        why = cli(b, "why", str(closure), check=False)
        assert "answers peers: the fleet only (peers = fleet): 2 tracker members" in why
        dashboard = httpx.get(a.url + "/dashboard", timeout=5).text
        assert 'id="peers-refused"' in dashboard and "answers fleet peers" in dashboard
        assert httpx.get(a.url + "/api/v1/activity", timeout=5).json()["totals"]["peers_refused"] == 2

        a.stop()  # the reference: with `peers = any` (the behaviour before closed fleets) the stranger is answered
        a.start("--tracker-token-file", str(token), "--peers", "any")
        assert admission(a)["mode"] == "any" and stranger.narinfo(a, closure)["status"] == "ok"
    finally:
        fleet.close()


def test_a_peer_removed_at_the_tracker_is_refused_within_one_sync_period(tmp_path: Path, closure: Path) -> None:
    """Allowlist membership: the daemon has no token, learns that the tracker is closed, and answers its
    members; the admin removes one, and within one sync period (1 s here) it is refused."""
    fleet = LocalFleet(tmp_path)
    a = fleet.host("a")
    member = Stranger()
    allowlist = tmp_path / "allowlist"
    allowlist.write_text(f"{a.key.key.verify_key.encode().hex()}\n{member.peer_id}\n")
    admin_token = secret_file(tmp_path / "admin.token", "the-fleet-admin-token-1")
    sync = 1.0
    try:
        fleet.start_tracker("--allowlist-file", str(allowlist), "--admin-token-file", str(admin_token))
        a.give(str(closure))
        a.start("--fleet-sync", str(sync))
        wait(lambda: admission(a)["tracker_membership"] == "allowlist", "a to learn the tracker's membership")
        assert admission(a)["mode"] == "fleet"

        body = json.dumps({"name": "member", "addresses": {"endpoint_id": member.peer_id, "direct": []},
                           "hashes": []}).encode()
        headers = {**sign(member.key, "POST", ANNOUNCE_PATH, body), "content-type": "application/json"}
        answer = httpx.post(fleet.tracker_url + ANNOUNCE_PATH, content=body, timeout=5, headers=headers)
        assert answer.status_code == 200, answer.text
        wait(lambda: admission(a)["tracker_members"] == 2, "a to list the member")
        assert member.narinfo(a, closure)["status"] == "ok"

        removed = httpx.delete(f"{fleet.tracker_url}{ADMIN_PEERS_PATH}/{member.peer_id}", timeout=5,
                               headers={"authorization": "Bearer the-fleet-admin-token-1"})
        assert removed.status_code == 200, removed.text
        took = wait(lambda: admission(a)["tracker_members"] == 1, "a to drop the member", interval=0.02)
        assert took < sync + 0.5, took  # a sync period, and the tracker's answer on a loaded machine
        assert member.narinfo(a, closure) == {"status": "not-found"}
        assert admission(a)["tracker_members"] == 1
    finally:
        fleet.close()


def test_a_newcomer_is_answered_at_once_and_strangers_cost_the_tracker_a_fetch_a_second(tmp_path: Path,
                                                                                   closure: Path) -> None:
    """Allowlist membership, the default sync period (30 s): a peer that registers after the daemon's last
    fetch of the member list is answered on its first question, since a peer not on the list makes the
    daemon fetch the list again. Strangers asking at once all wait on that one fetch."""
    fleet = LocalFleet(tmp_path)
    a = fleet.host("a")
    newcomer, strangers = Stranger(), [Stranger() for _ in range(8)]
    allowlist = tmp_path / "allowlist"
    allowlist.write_text(f"{a.key.key.verify_key.encode().hex()}\n{newcomer.peer_id}\n")
    try:
        fleet.start_tracker("--allowlist-file", str(allowlist))
        a.give(str(closure))
        a.start()
        wait(lambda: admission(a)["tracker_membership"] == "allowlist", "a to learn the tracker's membership")

        async def all_at_once() -> list[dict]:
            request = wire.encode_frame({"hash": hash_part(closure)})
            return await asyncio.gather(*(s.ask(a, wire.NARINFO_ALPN, request) for s in strangers))

        fetches, started = member_fetches(fleet), time.monotonic()
        assert asyncio.run(all_at_once()) == [{"status": "not-found"}] * len(strangers)
        took = time.monotonic() - started
        assert member_fetches(fleet) - fetches <= 1 + took / RECHECK_EVERY, took  # not one per stranger
        assert a.metric('peerix_peers_refused_total{alpn="/peerix/narinfo/1"}') == len(strangers)

        body = json.dumps({"name": "newcomer", "addresses": {"endpoint_id": newcomer.peer_id, "direct": []},
                           "hashes": []}).encode()
        headers = {**sign(newcomer.key, "POST", ANNOUNCE_PATH, body), "content-type": "application/json"}
        assert httpx.post(fleet.tracker_url + ANNOUNCE_PATH, content=body, timeout=5, headers=headers).is_success
        assert admission(a)["tracker_members"] < 2  # the next sync is half a minute away
        assert newcomer.narinfo(a, closure)["status"] == "ok"
        assert admission(a)["tracker_members"] == 2
        assert a.metric('peerix_peers_refused_total{alpn="/peerix/narinfo/1"}') == len(strangers)
    finally:
        fleet.close()


def member_fetches(fleet: LocalFleet) -> float:
    """Member-list requests the tracker answered."""
    for line in httpx.get(fleet.tracker_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("peerix_tracker_http_requests_total{") and 'route="members"' in line:
            return float(line.split()[-1])
    return 0.0


def cli(host: Host, *args: str, check: bool = True) -> str:
    result = subprocess.run([sys.executable, "-m", "peerix.cli", *args, "--url", host.url], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert not check or result.returncode == 0, result.stderr
    return result.stdout
