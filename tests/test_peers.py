"""The peer network end to end: a real tracker, several daemons with their own chroot stores,
iroh on loopback, and real Nix on the receiving host trusting only that host's key."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from netns import wait_for

from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import SecretKey, sign_info

from conftest import ROOT, Daemon, offline, requires_nix
from nixtools import HERE, build, closure_of, hash_part, nix, path_info, run

pytestmark = requires_nix

CLUSTER = SecretKey.generate("peers-cluster-1")


class Fleet:
    """A tracker and hosts; each host a chroot store, a host key and a peerix daemon."""

    def __init__(self, root: Path, start_tracker, start_daemon) -> None:
        self.root = root
        self.tracker = start_tracker()
        self.start_daemon = start_daemon
        self.daemons: dict[str, Daemon] = {}
        (root / "cluster.sec").write_text(CLUSTER.to_text())

    def store(self, name: str) -> Path:
        return self.root / name / "store"

    def key(self, name: str) -> SecretKey:
        path = self.root / name / "host.sec"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(SecretKey.generate(f"host-{name}-1").to_text())
            path.chmod(0o600)
        return SecretKey.parse(path.read_text())

    def give(self, name: str, *paths: Path) -> None:
        """Copy paths (with their closures) into a host's store, signed by the cluster key."""
        nix("copy", "--no-check-sigs", "--to", str(self.store(name)), *map(str, paths))
        nix("store", "sign", "--store", str(self.store(name)), "--key-file", str(self.root / "cluster.sec"), "-r",
            *map(str, paths))

    def start(self, name: str, *extra: str) -> Daemon:
        self.key(name)
        if not (self.store(name) / "nix/var/nix/db/db.sqlite").exists():
            run("nix-store", "--store", str(self.store(name)), "--init")
        daemon = self.start_daemon(
            "serve", "--store-root", str(self.store(name)), "--sign-key-file", str(self.root / name / "host.sec"),
            "--name", f"host-{name}", "--tracker", self.tracker.url, "--trusted-public-keys", CLUSTER.public.to_text(),
            "--connect-timeout", "1", "--peer-timeout", "2", "--miss-ttl", "0.5", *offline(self.root / name / "state"),
            *extra,
        )
        self.daemons[name] = daemon
        return daemon

    def wait_announced(self, *paths: Path, by: str) -> None:
        """Until the tracker lists host `by` for every path."""
        peer_id = self.health(by)["network"]["peer_id"]

        def listed() -> bool:
            for path in paths:
                answer = httpx.get(f"{self.tracker.url}/api/v1/lookup/{hash_part(path)}", timeout=5)
                if answer.status_code != 200 or peer_id not in answer.text:
                    return False
            return True

        wait_for(listed, timeout=20)

    def health(self, name: str) -> dict:
        return httpx.get(self.daemons[name].url + "/health", timeout=5).json()

    def metric(self, name: str, line_prefix: str) -> float:
        for line in httpx.get(self.daemons[name].url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(line_prefix):
                return float(line.split()[-1])
        return 0.0

    def nix_on(self, name: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Real Nix for host `name`'s store, substituting only from its own peerix and trusting only its key."""
        command = [
            "nix-store", "--store", str(self.store(name)), *args,
            "--option", "substituters", self.daemons[name].url,
            "--option", "trusted-public-keys", self.key(name).public.to_text(),
            "--option", "narinfo-cache-negative-ttl", "0",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def fleet(tmp_path: Path, start_tracker, start_daemon) -> Fleet:
    return Fleet(tmp_path, start_tracker, start_daemon)


@pytest.fixture(scope="module")
def second_closure() -> Path:
    return build(HERE / "nix" / "closure.nix", seed="peers-2")


def is_valid(store: Path, path: Path) -> bool:
    return run("nix-store", "--store", str(store), "--check-validity", str(path), check=False).returncode == 0


def verify(store: Path, *paths: Path, key: SecretKey) -> None:
    nix("store", "verify", "--store", str(store), "-r", *map(str, paths), "--sigs-needed", "1",
        "--trusted-public-keys", key.public.to_text())


def test_paths_split_across_two_hosts_reach_a_third(fleet: Fleet, closure: Path, second_closure: Path,
                                                   tmp_path: Path) -> None:
    fleet.give("a", closure)
    fleet.give("b", second_closure)
    for name in "abc":
        fleet.start(name)
    fleet.wait_announced(closure, by="a")
    fleet.wait_announced(second_closure, by="b")

    fleet.nix_on("c", "--realise", str(closure), str(second_closure))
    verify(fleet.store("c"), closure, second_closure, key=fleet.key("c"))
    log = fleet.daemons["c"].log
    a_id, b_id = (fleet.health(n)["network"]["peer_id"][:10] for n in "ab")
    assert f"peer={a_id}" in log and f"peer={b_id}" in log  # both hosts contributed

    # nix copy --from C's peerix into a separate store, trusting only C's key
    client = tmp_path / "client"
    nix("copy", "--from", fleet.daemons["c"].url, "--to", str(client), "--option", "trusted-public-keys",
        fleet.key("c").public.to_text(), str(closure), str(second_closure))
    assert sorted(path_info(closure, second_closure, store=str(client), recursive=True)) == sorted(
        [*closure_of(closure), *closure_of(second_closure)])
    peers = {p["name"]: p for p in httpx.get(fleet.daemons["c"].url + "/api/v1/peers").json()["peers"]}
    assert peers["host-a"]["source"] == "tracker" and peers["host-a"]["reputation"]["successes"] >= 1


def start_liar(fleet: Fleet, tmp_path: Path, name: str, narinfo: dict[str, str], nar: dict[str, str] | None = None
               ) -> subprocess.Popen:
    plan = tmp_path / f"{name}.json"
    plan.write_text(json.dumps({"tracker": fleet.tracker.url, "state": str(tmp_path / name), "name": name,
                                "narinfo": narinfo, "nar": nar or {}}))
    (tmp_path / name).mkdir()
    liar = subprocess.Popen([sys.executable, str(HERE / "liar.py"), str(plan)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert len(liar.stdout.readline().strip()) == 64, "the liar did not start"
    return liar


def test_lying_peers_are_refused_and_honest_copies_used(fleet: Fleet, closure: Path, tmp_path: Path) -> None:
    lib, data, app = (next(Path(p) for p in closure_of(closure) if f"-peerix-test-{name}" in p)
                      for name in ("lib", "data", "app"))
    fleet.give("a", closure)
    fleet.start("a")
    c = fleet.start("c")
    fleet.wait_announced(closure, by="a")
    a_info = {p: NarInfo.parse(httpx.get(f"{fleet.daemons['a'].url}/{hash_part(p)}.narinfo").text)
              for p in (lib, data)}
    forged = sign_info(a_info[lib].with_sigs(()), SecretKey.generate("peers-cluster-1"))  # the right name, not the key
    tampered = bytearray(run("nix-store", "--dump", str(data)).stdout)
    tampered[len(tampered) // 2] ^= 1  # a well-formed NAR, one bit off: only the hash can tell
    (tmp_path / "tampered.nar").write_bytes(tampered)
    forger = start_liar(fleet, tmp_path, "forger", narinfo={hash_part(lib): forged.to_text()})
    corrupter = start_liar(fleet, tmp_path, "corrupter", narinfo={hash_part(data): a_info[data].to_text()},
                           nar={hash_part(data): str(tmp_path / "tampered.nar")})
    try:
        # The forged narinfo is refused whoever answers first; A's honest one is accepted.
        answer = httpx.get(f"{c.url}/{hash_part(lib)}.narinfo")
        assert answer.status_code == 200
        assert NarInfo.parse(answer.text).nar_hash == a_info[lib].nar_hash
        assert fleet.metric("c", 'peerix_verification_failures_total{kind="narinfo"}') == 1
        # Only the corrupter has `data` now: its narinfo is genuine, its NAR is not.
        subprocess.run(["nix-store", "--store", str(fleet.store("a")), "--delete", str(app), str(data)], check=True,
                       capture_output=True)
        wait_for(lambda: "host-a" not in httpx.get(f"{fleet.tracker.url}/api/v1/lookup/{hash_part(data)}").text)
        first = fleet.nix_on("c", "--realise", str(data), check=False)
        assert first.returncode != 0, first.stderr  # the transfer was cut short: Nix rejects it
        assert not is_valid(fleet.store("c"), data)
        assert fleet.metric("c", 'peerix_verification_failures_total{kind="nar"}') == 1
        # An honest copy appears: the corrupter is backing off, the path arrives intact.
        fleet.give("a", closure)
        fleet.wait_announced(data, by="a")
        fleet.nix_on("c", "--realise", str(data), str(lib))
        verify(fleet.store("c"), data, lib, key=fleet.key("c"))
        peers = {p["name"]: p for p in httpx.get(f"{c.url}/api/v1/peers").json()["peers"]}
        assert peers["forger"]["reputation"]["failures"] >= 1 and peers["corrupter"]["reputation"]["failures"] >= 1
    finally:
        for liar in (forger, corrupter):
            liar.send_signal(signal.SIGTERM)
            liar.wait(10)


def test_peer_killed_mid_transfer_fails_fast_then_another_serves(fleet: Fleet, big_path: Path) -> None:
    fleet.give("a", big_path)
    fleet.start("a")
    fleet.start("c")
    fleet.wait_announced(big_path, by="a")
    started = time.monotonic()
    nix = subprocess.Popen(
        ["nix-store", "--store", str(fleet.store("c")), "--realise", str(big_path),
         "--option", "substituters", fleet.daemons["c"].url,
         "--option", "trusted-public-keys", fleet.key("c").public.to_text()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: fleet.metric("c", "peerix_peer_received_bytes_total") > 0, timeout=30, interval=0.01)
    fleet.daemons["a"].process.kill()
    nix.communicate(timeout=60)
    assert nix.returncode != 0 and time.monotonic() - started < 10  # failed within the peer timeout: no hang
    assert fleet.health("c")["status"] == "ok"
    fleet.give("b", big_path)
    fleet.start("b")
    fleet.wait_announced(big_path, by="b")
    fleet.nix_on("c", "--realise", str(big_path))
    verify(fleet.store("c"), big_path, key=fleet.key("c"))


def test_tracker_down_means_fast_misses_and_nix_falls_back(fleet: Fleet, closure: Path) -> None:
    c = fleet.start("c")
    fleet.tracker.stop()
    unknown = "0" * 32
    timings = []
    for _ in range(20):
        started = time.monotonic()
        assert httpx.get(f"{c.url}/{unknown}.narinfo").status_code == 404
        timings.append(time.monotonic() - started)
    assert max(timings) < 0.1, timings
    result = fleet.nix_on("c", "--realise", str(closure), check=False, timeout=30)
    assert result.returncode != 0 and "don't know how to build" in result.stderr
    assert fleet.metric("c", 'peerix_source_errors_total{source="tracker"}') >= 1


def test_a_dead_peer_costs_one_connect_timeout_then_nothing(fleet: Fleet, closure: Path, tmp_path: Path) -> None:
    from peerix.net.tracker_client import PeerAddresses, TrackerClient

    fleet.give("a", closure)
    fleet.start("a")
    c = fleet.start("c")
    fleet.wait_announced(closure, by="a")
    paths = closure_of(closure)

    async def announce_dead_peer() -> None:
        import os
        seed = os.urandom(32)
        client = TrackerClient(fleet.tracker.url, seed, tmp_path)
        await client.announce([hash_part(p) for p in paths], PeerAddresses(client.peer_id, ("127.0.0.1:9",)), "dead")
        await client.aclose()

    import asyncio
    asyncio.run(announce_dead_peer())
    started = time.monotonic()
    assert httpx.get(f"{c.url}/{hash_part(paths[0])}.narinfo", timeout=10).status_code == 200
    first = time.monotonic() - started
    started = time.monotonic()
    for path in paths[1:]:
        assert httpx.get(f"{c.url}/{hash_part(path)}.narinfo", timeout=10).status_code == 200
    later = time.monotonic() - started
    assert first < 1.5 and later < 0.5, (first, later)  # the dead peer is in backoff after its one timeout


def test_restart_sends_a_delta_not_everything(fleet: Fleet, closure: Path) -> None:
    fleet.give("a", closure)
    a = fleet.start("a")
    fleet.wait_announced(closure, by="a")
    assert "kind=full" in fleet.tracker.log
    a.stop()
    full_before = fleet.tracker.log.count("kind=full")
    fleet.start("a")
    wait_for(lambda: fleet.tracker.log.count("announce peer=") > full_before, timeout=20)
    time.sleep(0.5)
    assert fleet.tracker.log.count("kind=full") == full_before
    assert "kind=delta" in fleet.tracker.log or "kind=heartbeat" in fleet.tracker.log
    assert "deregister peer=" in fleet.tracker.log  # the clean stop said goodbye
