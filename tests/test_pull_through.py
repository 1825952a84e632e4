"""Pull-through: paths no peer holds come from the upstream once, through peerix, and are then held
for the fleet. The upstream is nginx serving an xz-compressed cache signed by an "upstream" key."""

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from netns import Network, wait_for, why_no_netns

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.common.secrets import write_secret
from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import SecretKey

from conftest import requires_nix
from nixtools import HERE, build, closure_of, hash_part, nix, path_info, run
from rollout import Rollout
from upstream import UpstreamCache

pytestmark = requires_nix

FAST = ("--connect-timeout", "1", "--peer-timeout", "3", "--miss-ttl", "0.5")


@pytest.fixture(scope="module")
def pulled() -> Path:
    return build(HERE / "nix" / "closure.nix", seed="pull-through-1")


@pytest.fixture
def upstream(tmp_path: Path, pulled: Path):
    cache = UpstreamCache(tmp_path / "upstream", str(pulled))
    yield cache
    cache.stop()


def pulling(fleet: LocalFleet, name: str, upstream: UpstreamCache, *extra: str) -> Host:
    host = fleet.host(name)
    host.start(*FAST, "--upstream", upstream.url, "--trusted-public-keys", upstream.public_key, *extra)
    return host


def verify(on: Host, *paths: Path) -> None:
    nix("store", "verify", "--store", str(on.store), "-r", *map(str, paths), "--sigs-needed", "1",
        "--trusted-public-keys", on.key.public.to_text())


def test_a_path_no_peer_holds_comes_from_the_upstream_once_and_is_held(fleet: LocalFleet, upstream: UpstreamCache,
                                                                        pulled: Path) -> None:
    a = pulling(fleet, "a", upstream)
    narinfo = NarInfo.parse(httpx.get(f"{a.url}/{hash_part(pulled)}.narinfo").text)
    assert narinfo.compression == "none" and narinfo.url.startswith("nar/")
    signers = {sig.partition(":")[0] for sig in narinfo.sigs}
    assert signers == {"upstream.test-1", a.key.name}  # the upstream's signature passes through, plus ours
    a.realise(str(pulled))
    verify(a, pulled)
    closure = closure_of(pulled)
    assert sorted(upstream.nar_fetches().values()) == [1] * len(closure)  # each NAR once, xz inflated on the way
    assert a.metric("peerix_upstream_fetches_total{outcome=\"complete\"}") == len(closure)
    fetched = a.metric("peerix_upstream_bytes_total")
    assert fetched > 0
    totals = httpx.get(f"{a.url}/api/v1/activity").json()["totals"]  # the dashboard's lifetime totals
    assert totals["bytes_from_upstream"] == fetched
    fetches = httpx.get(f"{a.url}/api/v1/transfers").json()["transfers"]  # each from the upstream, by name
    assert sorted(t["path"] for t in fetches) == closure
    assert {s["name"] for t in fetches for s in t["sources"]} == {"upstream 127.0.0.1"}
    # held, announced and served to the next host: the upstream sees nothing more
    fleet.wait_announced(a, closure)
    b = fleet.host("b")
    b.start(*FAST, "--upstream", upstream.url, "--trusted-public-keys", upstream.public_key)
    b.realise(str(pulled))
    verify(b, pulled)
    assert sum(upstream.nar_fetches().values()) == len(closure)
    assert b.metric("peerix_upstream_fetches_total{outcome=\"complete\"}") == 0
    saved = httpx.get(f"{b.url}/api/v1/activity").json()["saved"]  # A's copies, not the upstream's
    assert saved["bytes"] == sum(info["narSize"] for info in path_info(*closure).values())


def test_an_untrusted_upstream_path_is_not_pulled(fleet: LocalFleet, upstream: UpstreamCache, pulled: Path) -> None:
    a = fleet.host("a")
    a.start(*FAST, "--upstream", upstream.url)  # the upstream's key is not trusted here
    assert httpx.get(f"{a.url}/{hash_part(pulled)}.narinfo").status_code == 404
    assert upstream.nar_fetches() == {}


def test_with_pull_through_off_or_the_upstream_down_misses_stay_fast(fleet: LocalFleet, upstream: UpstreamCache,
                                                                     pulled: Path) -> None:
    off = pulling(fleet, "off", upstream, "--no-pull-through")
    assert httpx.get(f"{off.url}/{hash_part(pulled)}.narinfo").status_code == 404
    upstream.stop()
    down = pulling(fleet, "down", upstream)
    with httpx.Client() as client:
        timings = []
        for _ in range(30):
            started = time.monotonic()
            assert client.get(f"{down.url}/{hash_part(pulled)}.narinfo").status_code == 404
            timings.append(time.monotonic() - started)
    assert sorted(timings)[-2] < 0.1, timings  # one miss may wait for the connection to be refused
    assert upstream.nar_fetches() == {}


def test_a_download_that_breaks_is_never_held_and_the_next_attempt_succeeds(fleet: LocalFleet, tmp_path: Path,
                                                                            pulled: Path) -> None:
    broken = UpstreamCache(tmp_path / "broken", str(pulled))
    try:
        victim = next(broken.cache.glob("nar/*.nar.xz"))
        good = victim.read_bytes()
        victim.write_bytes(good[: len(good) // 2])  # cut short: the xz stream ends early
        a = pulling(fleet, "a", broken)
        assert a.realise(str(pulled), check=False).returncode != 0
        held = a.home / "state" / "held"
        wait_until(lambda: not list(held.glob(".tmp-*")), "the broken download to be dropped")
        assert len(list(held.glob("*.narinfo"))) < len(closure_of(pulled))  # the broken path is not held
        victim.write_bytes(good)
        wait_until(lambda: a.realise(str(pulled), check=False).returncode == 0, "a successful retry", timeout=30)
        verify(a, pulled)
    finally:
        broken.stop()


@pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")
def test_lan_hosts_that_all_want_a_path_fetch_it_from_the_upstream_once(tmp_path: Path, pulled: Path) -> None:
    """Four hosts on a switch, no tracker, all substituting the closure at the same moment: their LAN
    claims elect one host per path, the others follow it, and the upstream sends each NAR once."""
    net = Network()
    try:
        names = "abcd"
        hosts = {name: net.add_host(name) for name in names}
        up = net.add_host("up")
        cache = UpstreamCache(tmp_path / "upstream", str(pulled), address=up.addresses[0], command=up.command())
        wait_for(lambda: hosts["a"].run("curl", "-sf", f"{cache.url}/nix-cache-info", check=False).returncode == 0)
        keys = {}
        for name, host in hosts.items():
            home = tmp_path / name
            home.mkdir()
            keys[name] = SecretKey.generate(f"host-{name}-1")
            write_secret(home / "host.sec", keys[name].to_text())
            run("nix-store", "--store", str(home / "store"), "--init")
            host.peerix("serve", "--store-root", str(home / "store"), "--state-dir", str(home / "state"),
                        "--sign-key-file", str(home / "host.sec"), "--name", f"host-{name}",
                        "--upstream", cache.url, "--trusted-public-keys", cache.public_key, "--no-relays",
                        "--no-discovery", "--iroh-listen", "0.0.0.0:12305", "--lan-interval", "0.5",
                        "--lan-expiry", "3", log=home / "peerix.log")
        for name, host in hosts.items():
            wait_for(lambda: host.run("curl", "-sf", "http://127.0.0.1:12304/health", check=False).returncode == 0)
            wait_for(lambda: all(f"host-{other}" in host.get("http://127.0.0.1:12304/api/v1/peers")
                                 for other in names if other != name), timeout=10)
        copies = {name: subprocess.Popen(host.command(
            "env", f"XDG_CACHE_HOME={tmp_path / name / 'xdg'}", "nix", "copy", "--from", "http://127.0.0.1:12304",
            "--to", str(tmp_path / name / "client"), "--option", "trusted-public-keys", keys[name].public.to_text(),
            str(pulled)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, host in hosts.items()}
        for name, copy in copies.items():
            _, stderr = copy.communicate(timeout=300)
            assert copy.returncode == 0, f"{name}: {stderr}"
            nix("store", "verify", "--store", str(tmp_path / name / "client"), "-r", str(pulled), "--sigs-needed", "1",
                "--trusted-public-keys", keys[name].public.to_text())
        fetches = cache.nar_fetches()
        assert sorted(fetches.values()) == [1] * len(closure_of(pulled)), fetches
        assert cache.bytes_sent() <= 1.1 * cache.file_bytes()
        followed = sum("via=peer" in (tmp_path / name / "peerix.log").read_text() for name in names)
        assert followed >= 3  # every path had one host go upstream and the others follow it
    finally:
        net.close()


needs_netns = pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")


@pytest.fixture(scope="module")
def rollout_closure() -> Path:
    return build(HERE / "nix" / "rollout.nix", seed="rollout-1")


@needs_netns
def test_eight_hosts_rolling_out_one_closure_fetch_each_nar_from_the_upstream_once(tmp_path: Path,
                                                                                   rollout_closure: Path) -> None:
    fleet = Rollout(tmp_path, rollout_closure, hosts=8, rate="160mbit")
    try:
        fleet.start_all()
        fleet.copy_all()
        for name in fleet.hosts:
            fleet.verify(name)
        fetches = fleet.upstream.nar_fetches()
        assert sorted(fetches.values()) == [1] * len(closure_of(rollout_closure)), fetches
        assert fleet.upstream.bytes_sent() <= 1.1 * fleet.upstream.file_bytes()
        assert sum(fleet.metric(name, "peerix_lease_waits_total") for name in fleet.hosts) > 0
    finally:
        fleet.close()


@needs_netns
def test_a_lease_holder_killed_halfway_through_a_nar_is_taken_over(tmp_path: Path, rollout_closure: Path) -> None:
    """The holder dies mid-NAR: another host takes the lease over and finishes from the upstream, which
    sends at most that NAR's file once more."""
    fleet = Rollout(tmp_path, rollout_closure, hosts=3, rate="80mbit")  # 10 MB/s: the big NAR takes seconds
    try:
        fleet.start_all()
        big = max((fleet.upstream.cache / "nar").iterdir(), key=lambda path: path.stat().st_size).stat().st_size
        copies = {name: fleet.copy(name) for name in fleet.hosts}
        holder = wait_for(lambda: next((name for name in fleet.hosts
                                        if fleet.metric(name, "peerix_upstream_bytes_total") > big / 2), None),
                          timeout=60, interval=0.05)
        fleet.kill(holder)
        for name, copy in copies.items():
            _, stderr = copy.communicate(timeout=300)
            if name != holder:
                assert copy.returncode == 0, f"{name}: {stderr}"
                fleet.verify(name)
        taken_over = [name for name in fleet.hosts if name != holder
                      and fleet.metric(name, "peerix_lease_takeovers_total") >= 1]
        assert taken_over, "no host took the lease over"
        assert fleet.upstream.bytes_sent() <= fleet.upstream.file_bytes() + big
    finally:
        fleet.close()
