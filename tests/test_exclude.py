"""Share filters: a path whose name matches an exclude pattern is never announced, never served over
iroh or /store/, whatever the serving policy, and `peerix why` names the pattern."""

from pathlib import Path

import httpx

from peerix.cli.localfleet import LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo

from conftest import free_port, peerix, requires_nix
from nixtools import closure_of, hash_part

pytestmark = requires_nix


def test_excluded_paths_are_never_shared(tmp_path: Path, closure: Path) -> None:
    paths = closure_of(closure)
    data = next(p for p in paths if p.endswith("-peerix-test-data"))
    shared = [p for p in paths if p != data]
    config = tmp_path / "a.toml"
    config.write_text('exclude = ["*-peerix-test-dat?", "*-secrets*"]\nserve = "all"\n')  # even with serve = all
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(closure))
        # c knows a as a static peer too, so it asks a for every path, announced or not
        lan_a, lan_c = free_port(), free_port()
        a.start("--config", str(config), "--lan-port", str(lan_a), "--peer", f"127.0.0.1:{lan_c}")
        c.start("--miss-ttl", "0", "--lan-port", str(lan_c), "--peer", f"127.0.0.1:{lan_a}")
        fleet.wait_announced(a, shared)
        assert a.peer_id not in fleet.holders(data)  # never announced
        wait_until(lambda: httpx.get(f"{c.url}/api/v1/peers").json()["peers"], "c to hear of a")

        local = httpx.get(f"{a.url}/{hash_part(data)}.narinfo")  # its own Nix still gets it
        assert local.status_code == 200
        for url in (f"{a.url}/store/{hash_part(data)}.narinfo", f"{a.url}/store/{NarInfo.parse(local.text).url}"):
            refused = httpx.get(url)
            assert refused.status_code == 403 and "exclude pattern '*-peerix-test-dat?'" in refused.text

        assert httpx.get(f"{c.url}/{hash_part(shared[0])}.narinfo").status_code == 200
        assert httpx.get(f"{c.url}/{hash_part(data)}.narinfo").status_code == 404  # over iroh: refused
        assert a.metric('peerix_peer_requests_total{kind="narinfo",result="refused"}') == 1
        result = c.realise(str(closure), check=False)
        assert result.returncode != 0 and "-peerix-test-data" in result.stderr

        why = peerix("why", "--url", a.url, data)
        assert "shared with peers: no (private: matches the exclude pattern '*-peerix-test-dat?')" in why.stdout
    finally:
        fleet.close()
