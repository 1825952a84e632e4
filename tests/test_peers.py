"""The peer network end to end: a real tracker, several daemons with their own chroot stores,
iroh on loopback, and real Nix on the receiving host trusting only that host's key."""

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from peerix.cli.localfleet import FleetError, Host, LocalFleet, wait_until
from peerix.net.tracker_client import PeerAddresses, TrackerClient
from peerix.nix import nix32
from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import SecretKey, sign_info

import liar
from conftest import requires_nix
from nixtools import HERE, build, closure_of, hash_part, nix, path_info, run

pytestmark = requires_nix

FAST = ("--connect-timeout", "1", "--peer-timeout", "2", "--miss-ttl", "0.5")


def host(fleet: LocalFleet, name: str, *holding: Path) -> Host:
    """A started host holding `holding` (with their closures, signed by the fleet key)."""
    new = fleet.host(name)
    if holding:
        new.give(*map(str, holding))
    new.start(*FAST)
    if holding:
        fleet.wait_announced(new, [str(p) for p in holding])
    return new


@pytest.fixture(scope="module")
def second_closure() -> Path:
    return build(HERE / "nix" / "closure.nix", seed="peers-2")


def verify(on: Host, *paths: Path) -> None:
    nix("store", "verify", "--store", str(on.store), "-r", *map(str, paths), "--sigs-needed", "1",
        "--trusted-public-keys", on.key.public.to_text())


def is_valid(on: Host, path: Path) -> bool:
    return run("nix-store", "--store", str(on.store), "--check-validity", str(path), check=False).returncode == 0


def named(closure: Path, name: str) -> Path:
    return next(Path(p) for p in closure_of(closure) if f"-peerix-test-{name}" in p)


def test_paths_split_across_two_hosts_reach_a_third(fleet: LocalFleet, closure: Path, second_closure: Path,
                                                   tmp_path: Path) -> None:
    a, b, c = host(fleet, "a", closure), host(fleet, "b", second_closure), host(fleet, "c")
    c.realise(str(closure), str(second_closure))
    verify(c, closure, second_closure)
    assert f"peer={a.peer_id[:10]}" in c.log and f"peer={b.peer_id[:10]}" in c.log  # both hosts contributed

    # nix copy --from C's peerix into a separate store, trusting only C's key
    client = tmp_path / "client"
    nix("copy", "--from", c.url, "--to", str(client), "--option", "trusted-public-keys", c.key.public.to_text(),
        str(closure), str(second_closure))
    assert sorted(path_info(closure, second_closure, store=str(client), recursive=True)) == sorted(
        [*closure_of(closure), *closure_of(second_closure)])
    peers = {p["name"]: p for p in httpx.get(c.url + "/api/v1/peers").json()["peers"]}
    assert peers["a"]["source"] == "tracker" and peers["a"]["reputation"]["successes"] >= 1


def start_liar(fleet: LocalFleet, name: str, narinfo: dict[str, str], nar: dict[str, str] | None = None,
               realisation: dict[str, str] | None = None, references: dict[str, list[str]] | None = None,
               http: dict | None = None) -> subprocess.Popen:
    return liar.start(fleet.root, fleet.tracker_url, name, narinfo, nar, realisation=realisation or {},
                      references=references or {}, **({"http": http} if http else {}))


def nar_files(fleet: LocalFleet, path: Path) -> tuple[str, str]:
    """The path's NAR as two files: as it is, and one bit off (a well-formed NAR: only the hash can tell)."""
    honest = run("nix-store", "--dump", str(path)).stdout
    tampered = bytearray(honest)
    tampered[len(tampered) // 2] ^= 1
    files = fleet.root / f"{path.name}.nar", fleet.root / f"{path.name}.tampered.nar"
    files[0].write_bytes(honest)
    files[1].write_bytes(tampered)
    return str(files[0]), str(files[1])


def leave(fleet: LocalFleet, holder: Host, path: Path) -> None:
    """Stop `holder`, and wait until the tracker no longer names it for `path`."""
    holder_id = holder.peer_id
    holder.stop()
    wait_until(lambda: holder_id not in fleet.holders(str(path)), f"{holder.name}'s departure")


def test_lying_peers_are_refused_and_honest_copies_used(fleet: LocalFleet, closure: Path) -> None:
    lib, data, app = (named(closure, name) for name in ("lib", "data", "app"))
    a, c = host(fleet, "a", closure), host(fleet, "c")
    a_info = {p: NarInfo.parse(httpx.get(f"{a.url}/{hash_part(p)}.narinfo").text) for p in (lib, data)}
    forged = sign_info(a_info[lib].with_sigs(()), SecretKey.generate(fleet.cluster.name))  # right name, wrong key
    _, tampered = nar_files(fleet, data)
    forger = start_liar(fleet, "forger", narinfo={hash_part(lib): forged.to_text()})
    corrupter = start_liar(fleet, "corrupter", narinfo={hash_part(data): a_info[data].to_text()},
                           nar={hash_part(data): tampered})
    try:
        # With A away, only the forger offers `lib`: its narinfo is refused, Nix gets a 404.
        leave(fleet, a, lib)
        assert httpx.get(f"{c.url}/{hash_part(lib)}.narinfo").status_code == 404
        assert c.metric('peerix_verification_failures_total{kind="narinfo"}') == 1
        # A back: whoever answers first, only A's honest narinfo is accepted.
        a.start(*FAST)
        fleet.wait_announced(a, [str(lib)])
        time.sleep(0.6)  # the miss is remembered for --miss-ttl 0.5
        answer = httpx.get(f"{c.url}/{hash_part(lib)}.narinfo")
        assert answer.status_code == 200 and NarInfo.parse(answer.text).nar_hash == a_info[lib].nar_hash
        # Only the corrupter has `data` now: its narinfo is genuine, its NAR is not.
        run("nix-store", "--store", str(a.store), "--delete", str(app), str(data))
        wait_until(lambda: a.peer_id not in fleet.holders(str(data)), "A's delta")
        first = c.realise(str(data), check=False)
        assert first.returncode != 0  # the transfer was cut short: Nix rejects it
        assert not is_valid(c, data)
        assert c.metric('peerix_verification_failures_total{kind="nar"}') == 1
        # An honest copy appears: the corrupter is backing off, the path arrives intact.
        a.give(str(closure))
        fleet.wait_announced(a, [str(data)])
        c.realise(str(data), str(lib))
        verify(c, data, lib)
        peers = {p["name"]: p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]}
        assert peers["forger"]["reputation"]["failures"] >= 1 and peers["corrupter"]["reputation"]["failures"] >= 1
    finally:
        for liar in (forger, corrupter):
            liar.send_signal(signal.SIGTERM)
            liar.wait(10)


def test_references_come_with_the_narinfo_and_cost_no_round_trip(fleet: LocalFleet, closure: Path) -> None:
    lib, data, app = (named(closure, name) for name in ("lib", "data", "app"))
    a, c = host(fleet, "a", closure), host(fleet, "c")
    assert httpx.get(f"{c.url}/{hash_part(app)}.narinfo").status_code == 200
    assert c.metric('peerix_prefetched_narinfos_total{result="accepted"}') == 2
    for path in (lib, data):
        ours = NarInfo.parse(httpx.get(f"{c.url}/{hash_part(path)}.narinfo").text)
        assert ours.nar_hash == NarInfo.parse(httpx.get(f"{a.url}/{hash_part(path)}.narinfo").text).nar_hash
    c.realise(str(app))  # Nix asks for all three narinfos again and fetches the NARs from A
    verify(c, app)
    assert c.metric('peerix_peer_round_trips_total{kind="narinfo"}') == 1
    assert c.metric('peerix_prefetched_narinfos_total{result="used"}') >= 2


def test_prefetched_narinfos_without_a_trusted_signature_are_not_used(fleet: LocalFleet, closure: Path) -> None:
    lib, data, app = (named(closure, name) for name in ("lib", "data", "app"))
    a = host(fleet, "a", closure)
    honest = {path: NarInfo.parse(httpx.get(f"{a.url}/{hash_part(path)}.narinfo").text) for path in (app, lib, data)}
    untrusted = sign_info(honest[lib].with_sigs(()), SecretKey.generate("stranger-1")).to_text()
    forged = sign_info(honest[data].with_sigs(()), SecretKey.generate(fleet.cluster.name)).to_text()  # wrong key
    a.stop()  # only the liar holds the closure now
    liar = start_liar(fleet, "liar", narinfo={hash_part(app): honest[app].to_text(), hash_part(lib): untrusted,
                                              hash_part(data): forged},
                      references={hash_part(app): [untrusted, forged, honest[app].to_text()]})  # app: no reference
    try:
        c = host(fleet, "c")
        assert httpx.get(f"{c.url}/{hash_part(app)}.narinfo").status_code == 200
        assert httpx.get(f"{c.url}/{hash_part(lib)}.narinfo").status_code == 404  # asked, and refused
        assert httpx.get(f"{c.url}/{hash_part(data)}.narinfo").status_code == 404
        assert c.metric('peerix_prefetched_narinfos_total{result="refused"}') == 3
        assert c.metric('peerix_prefetched_narinfos_total{result="used"}') == 0
        assert c.metric('peerix_peer_round_trips_total{kind="narinfo"}') >= 2
    finally:
        liar.send_signal(signal.SIGTERM)
        liar.wait(10)


def test_a_banned_liar_is_never_dialled_not_even_as_a_last_resort(fleet: LocalFleet, closure: Path) -> None:
    data = named(closure, "data")
    a, c = host(fleet, "a", closure), host(fleet, "c")
    _, tampered = nar_files(fleet, data)
    genuine = httpx.get(f"{a.url}/{hash_part(data)}.narinfo").text
    leave(fleet, a, data)
    liar = start_liar(fleet, "liar", narinfo={hash_part(data): genuine}, nar={hash_part(data): tampered})
    try:
        assert c.realise(str(data), check=False).returncode != 0  # the liar alone sent it: banned
        assert liar.stdout.readline().split()[:2] == ["nar", hash_part(data)]
        liar_entry = next(p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"] if p["name"] == "liar")
        assert liar_entry["reputation"]["banned"]
        # A is back and answers the narinfo, then dies before the NAR: the liar is all that is left.
        a.start(*FAST)
        fleet.wait_announced(a, [str(data)])
        time.sleep(0.6)  # the miss is remembered for --miss-ttl 0.5
        answer = httpx.get(f"{c.url}/{hash_part(data)}.narinfo")
        assert answer.status_code == 200
        a.process.kill()
        a.process.wait()
        # A failed (a 503 that Nix retries: it may be back in a moment); the banned liar is not asked.
        assert httpx.get(f"{c.url}/{NarInfo.parse(answer.text).url}", timeout=30).status_code == 503
    finally:
        liar.send_signal(signal.SIGTERM)
        rest, _ = liar.communicate(timeout=10)
    assert "nar" not in rest.split(), rest  # not asked again after the ban


def test_a_peer_lying_over_the_fast_path_is_caught_and_banned(fleet: LocalFleet, closure: Path) -> None:
    data = named(closure, "data")
    a, c = host(fleet, "a", closure), host(fleet, "c")
    honest, tampered = nar_files(fleet, data)
    genuine = httpx.get(f"{a.url}/{hash_part(data)}.narinfo").text
    leave(fleet, a, data)
    # Honest over iroh, lying over the fast path: only the bytes that came over HTTP can be caught.
    liar = start_liar(fleet, "liar", narinfo={hash_part(data): genuine}, nar={hash_part(data): honest},
                      http={"mode": "serve", "nar": {hash_part(data): tampered}})
    try:
        assert c.realise(str(data), check=False).returncode != 0
        assert not is_valid(c, data)
        assert liar.stdout.readline().split() == ["nar", hash_part(data), "http"]
        assert c.metric('peerix_fast_path_ranges_total{result="ok"}') == 1
        assert c.metric('peerix_verification_failures_total{kind="nar"}') == 1
        liar_entry = next(p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"] if p["name"] == "liar")
        assert liar_entry["reputation"]["banned"]
        assert "do not match the NarHash" in liar_entry["reputation"]["ban_reason"]
    finally:
        liar.send_signal(signal.SIGTERM)
        liar.wait(10)


def test_a_fast_path_refused_or_broken_mid_nar_goes_on_over_iroh(fleet: LocalFleet, closure: Path) -> None:
    lib, data = named(closure, "lib"), named(closure, "data")
    a, c = host(fleet, "a", closure), host(fleet, "c")
    narinfos = {hash_part(path): httpx.get(f"{a.url}/{hash_part(path)}.narinfo").text for path in (lib, data)}
    nars = {hash_part(path): nar_files(fleet, path)[0] for path in (lib, data)}
    leave(fleet, a, lib)
    refusing = start_liar(fleet, "refusing", narinfo={hash_part(lib): narinfos[hash_part(lib)]},
                          nar={hash_part(lib): nars[hash_part(lib)]}, http={"mode": "refuse", "nar": {}})
    breaking = start_liar(fleet, "breaking", narinfo={hash_part(data): narinfos[hash_part(data)]},
                          nar={hash_part(data): nars[hash_part(data)]}, http={"mode": "break", "nar": nars})
    try:
        c.realise(str(lib), str(data))
        verify(c, lib, data)
        assert c.metric('peerix_fast_path_ranges_total{result="fallback"}') == 2
        assert c.metric('peerix_verification_failures_total{kind="nar"}') == 0
        assert "fast path failed" in c.log and "fast path broke" in c.log
        asked = {name: peer.stdout.readline().split()
                 for name, peer in (("refusing", refusing), ("breaking", breaking))}
        assert asked == {"refusing": ["nar", hash_part(lib), "http"], "breaking": ["nar", hash_part(data), "http"]}
        # and each was asked once more, over iroh, for the rest
        assert refusing.stdout.readline().split() == ["nar", hash_part(lib)]
        assert breaking.stdout.readline().split() == ["nar", hash_part(data)]
    finally:
        for peer in (refusing, breaking):
            peer.send_signal(signal.SIGTERM)
            peer.wait(10)


def test_a_remembered_miss_does_not_answer_a_nar_request(fleet: LocalFleet, closure: Path) -> None:
    """Nix asks for a NAR with a narinfo in hand: a holder may have appeared since the miss."""
    data = named(closure, "data")
    c = fleet.host("c")
    c.start("--connect-timeout", "1", "--peer-timeout", "2", "--miss-ttl", "60")
    assert httpx.get(f"{c.url}/{hash_part(data)}.narinfo").status_code == 404  # nobody has it: kept a minute
    a = host(fleet, "a", closure)
    info = NarInfo.parse(httpx.get(f"{a.url}/{hash_part(data)}.narinfo").text)
    assert httpx.get(f"{c.url}/{hash_part(data)}.narinfo").status_code == 404  # the miss, as remembered
    nar = httpx.get(f"{c.url}/{info.url}", timeout=30)
    assert nar.status_code == 200 and hashlib.sha256(nar.content).digest() == info.nar_hash


def test_peer_killed_mid_transfer_fails_fast_then_another_serves(fleet: LocalFleet, big_path: Path) -> None:
    a, c = host(fleet, "a", big_path), host(fleet, "c")
    started = time.monotonic()
    nix_process = c.nix_realise(str(big_path))
    wait_until(lambda: c.metric("peerix_peer_received_bytes_total") > 0, "the transfer to start")
    a.process.kill()
    nix_process.communicate(timeout=60)
    assert nix_process.returncode != 0 and time.monotonic() - started < 10  # failed within the peer timeout
    assert c.health()["status"] == "ok"
    host(fleet, "b", big_path)
    c.realise(str(big_path))
    verify(c, big_path)


def test_tracker_down_means_fast_misses_and_nix_falls_back(fleet: LocalFleet, closure: Path) -> None:
    c = host(fleet, "c")
    fleet.stop_tracker()
    timings = []
    with httpx.Client() as client:  # one connection, as Nix keeps one: a new client costs ~50 ms of TLS setup
        for _ in range(20):
            started = time.monotonic()
            assert client.get(f"{c.url}/{'0' * 32}.narinfo").status_code == 404
            timings.append(time.monotonic() - started)
    # the first finds the tracker down (refused at once, not a timeout); the others do not ask it (backoff)
    assert timings[0] < 1 and max(timings[1:]) < 0.1, timings
    result = c.realise(str(closure), check=False, timeout=30)
    assert result.returncode != 0 and "don't know how to build" in result.stderr
    assert c.metric('peerix_source_errors_total{source="tracker"}') >= 1


def test_a_hung_tracker_keeps_misses_fast(fleet: LocalFleet) -> None:
    c = host(fleet, "c")
    with httpx.Client() as client:
        assert client.get(f"{c.url}/{nix32.encode(os.urandom(20))}.narinfo").status_code == 404
        fleet.tracker_process.send_signal(signal.SIGSTOP)  # hung: connections are accepted, nothing answers
        try:
            timings = []
            started = time.monotonic()
            while len(timings) < 200:  # over ~10 s: the client's backoff (1 s, 2 s, 4 s) runs out three times
                miss = f"{c.url}/{nix32.encode(os.urandom(20))}.narinfo"
                began = time.monotonic()
                assert client.get(miss, timeout=10).status_code == 404
                timings.append(time.monotonic() - began)
                time.sleep(max(0.0, started + len(timings) * 0.05 - time.monotonic()))
        finally:
            fleet.tracker_process.send_signal(signal.SIGCONT)
    timings.sort()
    assert timings[197] < 0.1, timings[-5:]  # p99


def test_a_slow_tracker_is_waited_for_not_taken_for_a_hung_one(fleet: LocalFleet, closure: Path) -> None:
    """A tracker that runs a fifth of the time, as on a machine with a load of ten per core (found by the
    soak): its answers take up to half a second. Misses learn how slow it is and wait for it, so Nix gets
    the paths a peer holds rather than 404s that make it build them (or give up)."""
    host(fleet, "a", closure)
    c = host(fleet, "c")
    stopped = threading.Event()

    def overloaded() -> None:
        while not stopped.is_set():
            fleet.tracker_process.send_signal(signal.SIGSTOP)
            time.sleep(0.4)
            fleet.tracker_process.send_signal(signal.SIGCONT)
            time.sleep(0.1)

    slow = threading.Thread(target=overloaded)
    slow.start()
    try:
        for _ in range(5):  # misses: what c learns the tracker's pace from
            assert httpx.get(f"{c.url}/{nix32.encode(os.urandom(20))}.narinfo", timeout=10).status_code == 404
        c.realise(str(closure))
    finally:
        stopped.set()
        slow.join()
        fleet.tracker_process.send_signal(signal.SIGCONT)
    verify(c, closure)


def test_a_dead_peer_costs_one_connect_timeout_then_nothing(fleet: LocalFleet, closure: Path) -> None:
    host(fleet, "a", closure)
    c = host(fleet, "c")
    paths = closure_of(closure)

    async def announce_dead_peer() -> None:
        seed = os.urandom(32)
        client = TrackerClient(fleet.tracker_url, seed, fleet.root)
        await client.announce([hash_part(p) for p in paths], PeerAddresses(client.peer_id, ("127.0.0.1:9",)), "dead")
        await client.aclose()

    asyncio.run(announce_dead_peer())
    started = time.monotonic()
    assert httpx.get(f"{c.url}/{hash_part(paths[0])}.narinfo", timeout=10).status_code == 200
    first = time.monotonic() - started
    started = time.monotonic()
    for path in paths[1:]:
        assert httpx.get(f"{c.url}/{hash_part(path)}.narinfo", timeout=10).status_code == 200
    later = time.monotonic() - started
    assert first < 1.5 and later < 0.5, (first, later)  # the dead peer is in backoff after its one timeout


def test_restart_sends_a_delta_not_everything(fleet: LocalFleet, closure: Path) -> None:
    a = host(fleet, "a", closure)
    assert fleet.tracker_log.count("kind=full") == 1
    a.stop()
    assert "deregister peer=" in fleet.tracker_log  # a clean stop says goodbye
    announces = fleet.tracker_log.count("announce peer=")
    a.start(*FAST)
    wait_until(lambda: fleet.tracker_log.count("announce peer=") > announces, "the announce after the restart")
    assert fleet.tracker_log.count("kind=full") == 1
    fleet.wait_announced(a, [str(closure)])


def test_a_daemon_takes_the_first_token_of_its_token_file(tmp_path: Path, closure: Path) -> None:
    """The daemon reads its tracker_token_file as the tracker reads token files: one token a line, blank
    lines and # comments skipped; it sends the first."""
    fleet = LocalFleet(tmp_path)
    try:
        tracker_tokens = tmp_path / "tracker.tokens"
        tracker_tokens.write_text("new-fleet-token-0123456789\nold-fleet-token-0123456789\n")
        tracker_tokens.chmod(0o600)
        fleet.start_tracker("--token-file", str(tracker_tokens))
        a = fleet.host("a")
        a.give(str(closure))
        (a.home / "tracker.token").write_text("# rotated: the new token first, the old one for a while\n\n"
                                              "  new-fleet-token-0123456789  \nold-fleet-token-0123456789\n")
        (a.home / "tracker.token").chmod(0o600)
        a.start(*FAST, "--tracker-token-file", str(a.home / "tracker.token"))
        wait_until(lambda: (a.health()["network"]["tracker"] or {}).get("announced_paths"), "a's announce", 15)
        assert f"announce peer={a.peer_id} name='a' kind=full" in fleet.tracker_log
        assert "refused" not in fleet.tracker_log

        b = fleet.host("b")
        (b.home / "tracker.token").write_text("# nothing but a comment\n\n")
        (b.home / "tracker.token").chmod(0o600)
        with pytest.raises(FleetError, match="exited with 2"):
            b.start(*FAST, "--tracker-token-file", str(b.home / "tracker.token"))
        assert "holds no token" in b.log
    finally:
        fleet.close()


def test_a_refused_daemon_asks_again_in_minutes_and_says_so_once(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path)
    try:
        fleet.start_tracker("--allow", "ab" * 32)  # someone else's fleet
        a = fleet.host("a")
        a.start(*FAST)

        def refusals() -> float:
            for line in httpx.get(fleet.tracker_url + "/metrics", timeout=5).text.splitlines():
                if line.startswith('peerix_tracker_refusals_total{code="not_member",'):  # and replica=
                    return float(line.split()[-1])
            return 0.0

        wait_until(lambda: refusals() >= 1, "the tracker to refuse a")
        time.sleep(3)  # a daemon that retried every second would have been refused three more times
        # The first refused request, and the other one when it left before that refusal came back: the
        # announce and the member list's first fetch race, and whichever is refused first silences both
        refused = re.findall(r"refused status=403 code=not_member method=(\w+) path=(\S+)", fleet.tracker_log)
        assert 1 <= len(refused) == len(set(refused)), refused
        assert set(refused) <= {("POST", "/api/v1/announce"), ("GET", "/api/v1/members")}, refused
        assert refusals() == len(refused), refused
        [line] = [line for line in a.log.splitlines() if "tracker refused this peer" in line]
        assert " ERROR " in line and f"peer={a.peer_id}" in line and "code=not_member" in line
        assert "not asking again for" in line and "allowlist" in line
        assert "announce failed" not in a.log
        assert a.health()["network"]["tracker"]["in_backoff"] is True
    finally:
        fleet.close()
