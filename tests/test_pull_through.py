"""Pull-through: paths no peer holds come from the upstream once, through peerix, and are then held
for the fleet. The upstream is nginx serving an xz-compressed cache signed by an "upstream" key."""

import time
from pathlib import Path

import httpx
import pytest

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo

from conftest import requires_nix
from nixtools import HERE, build, closure_of, hash_part, nix
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
    # held, announced and served to the next host: the upstream sees nothing more
    fleet.wait_announced(a, closure)
    b = fleet.host("b")
    b.start(*FAST, "--upstream", upstream.url, "--trusted-public-keys", upstream.public_key)
    b.realise(str(pulled))
    verify(b, pulled)
    assert sum(upstream.nar_fetches().values()) == len(closure)
    assert b.metric("peerix_upstream_fetches_total{outcome=\"complete\"}") == 0


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
