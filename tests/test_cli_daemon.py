"""The commands people run against their daemon: status and why, on a real fleet."""

import json
from pathlib import Path

from peerix.cli.localfleet import LocalFleet
from peerix.nix.signing import SecretKey

from conftest import peerix, requires_nix
from nixtools import hash_part, nix

pytestmark = requires_nix


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
        unknown = peerix("why", "--url", c.url, "0" * 32)
        assert "decision: not found: no known peer has it" in unknown.stdout
        bad = peerix("why", "--url", c.url, "not-a-path")
        assert bad.returncode == 2 and "not a store path or hash" in bad.stderr
        down = peerix("status", "--url", a.url)
        assert down.returncode == 2 and "cannot ask the daemon" in down.stderr
    finally:
        fleet.close()
