"""NARs from several peers: resumed on another peer when one dies, split across peers, a liar in a
split transfer found out, and no temporary file left behind, with real Nix as the client."""

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from churn import fetch, nar_url
from test_peers import FAST, host, is_valid, start_liar, verify

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo

from conftest import requires_nix
from nixtools import HERE, build, hash_part, path_info, run
from soak import Usage

pytestmark = requires_nix

CAPPED = ("--max-upload-rate", "40M")


@pytest.fixture(scope="module")
def big200() -> Path:
    return build(HERE / "nix" / "big200.nix")


def nar_size(path: Path) -> int:
    return path_info(path)[str(path)]["narSize"]


def temporary_files(on: Host) -> list[str]:
    """Files under the state directory that the daemon holds open although they have no name."""
    state, found = str(on.home / "state"), []
    for fd in Path(f"/proc/{on.process.pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith(state) and target.endswith("(deleted)"):
            found.append(target)
    return found


def capped_senders(fleet: LocalFleet, path: Path) -> tuple[Host, Host]:
    """Hosts a and b holding `path`, each uploading at most 40 MiB/s: slow enough to act mid-transfer."""
    senders = fleet.host("a"), fleet.host("b")
    for sending in senders:
        sending.give(str(path))
        sending.start(*FAST, *CAPPED)
    for sending in senders:
        fleet.wait_announced(sending, [str(path)])
    return senders


def sender(*hosts: Host) -> Host:
    return max(hosts, key=lambda h: h.metric("peerix_peer_sent_bytes_total"))


@pytest.mark.parametrize("mode", ["split", "one peer at a time"])
def test_peer_killed_halfway_nix_gets_the_rest_from_another(fleet: LocalFleet, big200: Path, mode: str) -> None:
    a, b = capped_senders(fleet, big200)
    c = fleet.host("c")
    c.start(*FAST, *(() if mode == "split" else ("--max-sources", "1")))
    size = nar_size(big200)
    nix_process = c.nix_realise(str(big200))
    wait_until(lambda: c.metric("peerix_peer_received_bytes_total") > size / 2, "half of the NAR", timeout=60)
    victim = sender(a, b)
    victim.process.kill()
    output, _ = nix_process.communicate(timeout=120)
    assert nix_process.returncode == 0, output
    verify(c, big200)
    received = c.metric("peerix_peer_received_bytes_total")
    assert size <= received < 1.2 * size
    peers = {p["name"]: p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]}
    assert peers[victim.name]["reputation"]["failures"] >= 1  # noticed, and the rest came from the other
    if mode == "one peer at a time":  # a split victim may die between pieces, with no piece to resume
        assert c.metric("peerix_nar_resumes_total") >= 1
    assert c.metric('peerix_nar_split_transfers_total') == (1 if mode == "split" else 0)
    assert temporary_files(c) == []


def test_split_reassembles_odd_sizes_and_many_small_files(fleet: LocalFleet) -> None:
    paths = [build(HERE / "nix" / "smallfiles.nix", seed="split"),
             build(HERE / "nix" / "big.nix", megabytes="3", seed="odd")]
    a, b = host(fleet, "a", *paths), host(fleet, "b", *paths)
    c = fleet.host("c")
    c.start("--connect-timeout", "1", "--peer-timeout", "2", "--split-threshold", "1")
    c.realise(*map(str, paths))
    verify(c, *paths)
    assert c.metric("peerix_nar_split_transfers_total") == 2
    assert a.metric("peerix_peer_sent_bytes_total") > 0 and b.metric("peerix_peer_sent_bytes_total") > 0
    assert temporary_files(c) == []


def test_a_liar_in_a_split_transfer_is_found_and_the_nar_refetched(fleet: LocalFleet, big_path: Path) -> None:
    a = host(fleet, "a", big_path)
    a.stop()
    a.start("--max-upload-rate", "20M")  # slow, so that the liar gets pieces too
    fleet.wait_announced(a, [str(big_path)])
    info = NarInfo.parse(httpx.get(f"{a.url}/{hash_part(big_path)}.narinfo").text)
    tampered = bytearray(run("nix-store", "--dump", str(big_path)).stdout)
    for position in range(1000, len(tampered), 1 << 20):
        tampered[position] ^= 1  # well-formed, wrong in every piece the liar may send
    (fleet.root / "tampered.nar").write_bytes(tampered)
    liar = start_liar(fleet, "liar", narinfo={hash_part(big_path): info.to_text()},
                      nar={hash_part(big_path): str(fleet.root / "tampered.nar")})
    try:
        c = fleet.host("c")
        c.start("--connect-timeout", "1", "--peer-timeout", "2", "--split-threshold", "1M")
        first = c.realise(str(big_path), check=False)
        assert first.returncode != 0 and not is_valid(c, big_path)  # the whole-NAR hash caught it
        assert c.metric('peerix_verification_failures_total{kind="nar"}') == 1
        assert temporary_files(c) == []
        peers = {p["name"]: p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]}
        assert peers["liar"]["reputation"]["failures"] >= 1  # found out by the audit
        assert peers["a"]["reputation"]["failures"] == 0  # the honest peer keeps its standing
        c.realise(str(big_path))  # refetched from the honest peer
        verify(c, big_path)
        peers = {p["name"]: p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]}
        assert peers["liar"]["reputation"]["banned"] and not peers["a"]["reputation"]["banned"]
    finally:
        liar.send_signal(signal.SIGTERM)
        liar.wait(10)


def test_cancelled_split_transfer_leaves_no_temporary_file(fleet: LocalFleet, big200: Path) -> None:
    capped_senders(fleet, big200)
    c = host(fleet, "c")
    nix_process = c.nix_realise(str(big200))
    wait_until(lambda: temporary_files(c) != [], "the split transfer to start", timeout=30)
    assert not any(p.name.startswith("peerix-nar-") for p in (c.home / "state").iterdir())  # nameless
    nix_process.kill()
    nix_process.wait(10)
    wait_until(lambda: temporary_files(c) == [], "the temporary file to go", timeout=15)


def test_the_buffers_of_nars_at_once_go_back_to_the_system(fleet: LocalFleet, big_path: Path) -> None:
    """Eight NARs at once through a host, then quiet: its RSS comes back to what one NAR left (found by the
    soak, where busy daemons kept a quarter more after their busiest moment: glibc kept the freed buffers)."""
    host(fleet, "a", big_path)
    c = host(fleet, "c")
    url = nar_url(c, hash_part(big_path))
    fetch(url)  # what a daemon holds once it has moved a NAR
    before = Usage.of(c.process.pid).rss_kib
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fetch, [url] * 8)) == [nar_size(big_path)] * 8
    grown = Usage.of(c.process.pid).rss_kib - before
    assert grown < 8 << 10, f"{grown >> 10} MiB more"
