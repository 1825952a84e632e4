"""The commands people run against their daemon: status and why, on a real fleet."""

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import httpx

from peerix.cli.localfleet import LocalFleet, wait_until
from peerix.net.tracker_client import PeerAddresses, TrackerClient
from peerix.nix.signing import SecretKey

from conftest import free_port, peerix, requires_nix
from nixtools import hash_part, nix

pytestmark = requires_nix


def announce_dead_peer(fleet: LocalFleet, hashes: list[str]) -> str:
    """A peer the tracker names as holding `hashes`, at an address where nobody answers; its id."""
    async def announce() -> str:
        client = TrackerClient(fleet.tracker_url, os.urandom(32), fleet.root)
        await client.announce(hashes, PeerAddresses(client.peer_id, ("127.0.0.1:9",)), "dead")
        await client.aclose()
        return client.peer_id

    return asyncio.run(announce())


def test_status_and_why_explain_local_peer_and_refused_paths(tmp_path: Path, closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        a, b, c = fleet.host("a"), fleet.host("b"), fleet.host("c")
        a.give(str(closure))
        # b offers the same closure signed only by a key nobody trusts: policy must refuse it
        nix("copy", "--no-check-sigs", "--to", str(b.store), str(closure))
        (tmp_path / "rogue.key").write_text(SecretKey.generate("rogue-1").to_text())
        nix("store", "sign", "--store", str(b.store), "--key-file", str(tmp_path / "rogue.key"), "-r", str(closure))
        for host in (a, b, c):
            host.start("--serve", "all")
        fleet.wait_announced(a, [str(closure)])
        fleet.wait_announced(b, [str(closure)])

        status = peerix("status", "--url", c.url)
        assert status.returncode == 0, status.stderr
        assert f"peer {c.peer_id}" in status.stdout and fleet.tracker_url in status.stdout

        local = peerix("why", "--url", a.url, str(closure))
        assert local.returncode == 0 and "local: yes" in local.stdout
        assert "decision: substituted from this host's store" in local.stdout
        assert "shared with peers: yes (serving policy is 'all')" in local.stdout

        remote = json.loads(peerix("why", "--url", c.url, "--json", hash_part(closure)).stdout)
        verdicts = {peer["peer_id"]: peer for peer in remote["peers"]}
        assert verdicts[a.peer_id]["result"] == "ok" and "signed by" in verdicts[a.peer_id]["reason"]
        assert verdicts[b.peer_id]["result"] == "rejected"
        assert "no signature by a trusted key" in verdicts[b.peer_id]["reason"]
        assert remote["decision"] == f"substituted from peer {a.peer_id[:12]} (tracker)"

        a.stop()
        refused = peerix("why", "--url", c.url, f"/nix/store/{closure.name}")
        assert "decision: refused: no peer's copy passes this host's policy" in refused.stdout
        assert refused.returncode == 1  # no source would serve it
        unknown = peerix("why", "--url", c.url, "0" * 32)
        assert "decision: not found: no known peer has it" in unknown.stdout and unknown.returncode == 1
        bad = peerix("why", "--url", c.url, "not-a-path")
        assert bad.returncode == 2 and "not a store path or hash" in bad.stderr
        down = peerix("status", "--url", a.url)
        assert down.returncode == 2 and "cannot ask the daemon" in down.stderr
    finally:
        fleet.close()


def test_why_and_peers_show_backoff_and_status_counts_what_peers_lists(tmp_path: Path, closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        lan_a, lan_c = free_port(), free_port()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(closure))
        # a and c find each other by unicast discovery; the tracker also names a dead peer holding the closure
        a.start("--lan-port", str(lan_a), "--peer", f"127.0.0.1:{lan_c}")
        c.start("--lan-port", str(lan_c), "--peer", f"127.0.0.1:{lan_a}", "--connect-timeout", "1", "--miss-ttl", "0")
        fleet.wait_announced(a, [str(closure)])
        dead = announce_dead_peer(fleet, [hash_part(closure)])
        a.stop()  # only the dead peer is left to ask

        for _ in range(3):  # three misses in a row: the dead peer's backoff grows to 8 s
            wait_until(lambda: not any(p["reputation"] and p["reputation"]["backing_off"]
                                       for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]), "backoff's end")
            assert httpx.get(f"{c.url}/{hash_part(closure)}.narinfo", timeout=10).status_code == 404
        why = httpx.get(f"{c.url}/api/v1/why/{hash_part(closure)}", timeout=10).json()  # right after the miss
        verdicts = {peer["peer_id"]: peer for peer in why["peers"]}
        assert verdicts[dead]["result"] == "backing-off" and verdicts[dead]["latency_ms"] is None
        assert "no connection within 1 s; not asked for another " in verdicts[dead]["reason"]
        assert why["decision"].startswith("not found now: ") and not why["substitutable"]

        listed = peerix("peers", "--url", c.url)
        dead_row = next(line for line in listed.stdout.splitlines() if dead[:12] in line)
        assert "backing off for " in dead_row and "no connection within 1 s" in dead_row

        status = peerix("status", "--url", c.url)
        assert status.returncode == 0, status.stdout + status.stderr
        assert sorted(line.split()[0] for line in listed.stdout.splitlines()[1:]) == ["a", "dead"]
        assert "peers       2 known (1 on the LAN or static, 1 named by the tracker), 2 backing off, 0 banned" \
            in status.stdout, status.stdout  # a, stopped, is a LAN peer: asked too, and failed
    finally:
        fleet.close()


def test_status_says_when_the_tracker_does_not_answer(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        c = fleet.host("c")
        c.start("--tracker", f"http://127.0.0.1:{free_port()}")  # nobody listens there
        deadline = time.monotonic() + 30
        while "degraded" not in (status := peerix("status", "--url", c.url)).stdout:  # between two backoffs
            assert time.monotonic() < deadline, status.stdout
        assert status.returncode == 1
        assert status.stdout.startswith("status      degraded: the tracker failed, asked again in ")
        tracker = next(line for line in status.stdout.splitlines() if line.startswith("tracker"))
        assert "nothing announced yet; last error: tracker http://127.0.0.1:" in tracker and "None" not in tracker
    finally:
        fleet.close()


def test_why_explains_a_private_path_at_once_when_upstream_hangs(tmp_path: Path, closure: Path) -> None:
    fleet = LocalFleet(tmp_path)
    with socket.socket() as hung:  # accepts connections (the kernel does), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        upstream = f"http://127.0.0.1:{hung.getsockname()[1]}"
        try:
            d = fleet.host("d")
            nix("copy", "--no-check-sigs", "--to", str(d.store), str(closure))
            (tmp_path / "rogue.key").write_text(SecretKey.generate("rogue-1").to_text())
            nix("store", "sign", "--store", str(d.store), "--key-file", str(tmp_path / "rogue.key"), str(closure))
            d.start("--upstream", upstream)
            timings, reasons = [], []
            for _ in range(2):
                started = time.monotonic()
                why = httpx.get(f"{d.url}/api/v1/why/{hash_part(closure)}", timeout=30).json()
                timings.append(time.monotonic() - started)
                reasons.append(why["sharing_reason"])
            assert reasons[0] == (
                "private: no signature by a trusted key (signed by d-peerix-1, rogue-1, not trusted here), "
                f"and upstream {upstream} unreachable (ReadTimeout: no answer within 2 s)")
            assert reasons[1].endswith("; not asked again for 30 s")
            assert timings[0] < 3 and timings[1] < 0.5, timings  # one short timeout, then nothing
        finally:
            fleet.close()
