"""LAN mode on real separate hosts: network namespaces on a bridge, no tracker, real Nix."""

import json
import subprocess
import sys
import time
from pathlib import Path

import nacl.signing
import pytest
from netns import Host, Network, wait_for, why_no_netns

from peerix.net.endpoint import EndpointAddress
from peerix.net.lan import Announcement, encode
from peerix.nix.signing import SecretKey

from conftest import ROOT, requires_nix
from nixtools import closure_of, nix, path_info, run

pytestmark = [requires_nix, pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")]

CLUSTER = SecretKey.generate("lan-cluster-1")
FLEET_TOKEN = "the-lan-fleet-token-of-e-and-f"
PORT = 12304


class Site:
    """Hosts a, b and c on one switch; host d cabled to a only. A peerix daemon on each, no tracker;
    a holds the closure, signed by the cluster key every daemon trusts. On the same switch, e and f
    hold a fleet token (a closed fleet inside the open one): e holds the closure too."""

    def __init__(self, root: Path, closure: Path) -> None:
        self.root = root
        self.started: dict[str, float] = {}
        self.net = Network()
        self.hosts = {name: self.net.add_host(name) for name in "abc"}
        self.hosts["d"] = self.net.add_host("d", on_switch=False)
        self.hosts.update({name: self.net.add_host(name) for name in "ef"})
        self.net.link(self.hosts["a"], self.hosts["d"], "10.232.0")
        (root / "cluster.sec").write_text(CLUSTER.to_text())
        self.fleet_token = root / "fleet.token"
        self.fleet_token.write_text(FLEET_TOKEN + "\n")
        self.fleet_token.chmod(0o600)
        for name in self.hosts:
            run("nix-store", "--store", str(self.store(name)), "--init")
        for name in "ae":
            nix("copy", "--no-check-sigs", "--to", str(self.store(name)), str(closure))
            nix("store", "sign", "--store", str(self.store(name)), "--key-file", str(root / "cluster.sec"), "-r",
                str(closure))
        for name in self.hosts:
            extra = {"d": ["--no-lan", "--peer", "10.232.0.1"],  # a VPN: unicast
                     "e": ["--fleet-token-file", str(self.fleet_token)],
                     "f": ["--fleet-token-file", str(self.fleet_token)]}
            self.start(name, *extra.get(name, []))

    def store(self, name: str) -> Path:
        return self.root / name / "store"

    def start(self, name: str, *extra: str) -> None:
        host, home = self.hosts[name], self.root / name
        key = home / "host.sec"
        if not key.exists():
            key.write_text(SecretKey.generate(f"host-{name}-1").to_text())
            key.chmod(0o600)
        host.peerix(
            "serve", "--store-root", str(self.store(name)), "--state-dir", str(home / "state"),
            "--sign-key-file", str(key), "--name", f"host-{name}", "--trusted-public-keys", CLUSTER.public.to_text(),
            "--upstream", "none", "--no-relays", "--no-discovery", "--iroh-listen", "0.0.0.0:12305",
            "--lan-interval", "0.5", "--lan-expiry", "3", *extra, log=home / "peerix.log",
        )
        wait_for(lambda: host.run("curl", "-sf", f"http://127.0.0.1:{PORT}/health", check=False).returncode == 0)
        self.started[name] = time.monotonic()

    def public_key(self, name: str) -> str:
        return SecretKey.parse((self.root / name / "host.sec").read_text()).public.to_text()

    def peers(self, name: str) -> dict[str, dict]:
        listed = json.loads(self.hosts[name].get(f"http://127.0.0.1:{PORT}/api/v1/peers"))["peers"]
        return {peer["name"]: peer for peer in listed}

    def metrics(self, name: str) -> str:
        return self.hosts[name].get(f"http://127.0.0.1:{PORT}/metrics")

    def log(self, name: str) -> str:
        return (self.root / name / "peerix.log").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, closure: Path):
    site = Site(tmp_path_factory.mktemp("lan"), closure)
    yield site
    site.net.close()


def substitute(site: Site, name: str, closure: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Real Nix on host `name`, substituting from that host's own peerix and trusting only its key."""
    client = tmp_path / f"client-{name}"
    return site.hosts[name].run(
        "env", f"XDG_CACHE_HOME={tmp_path / 'xdg'}", "nix", "copy", "--from", f"http://127.0.0.1:{PORT}",
        "--to", str(client), "--option", "trusted-public-keys", site.public_key(name), str(closure), check=False,
    )


def test_hosts_on_a_switch_find_each_other_within_a_second(site: Site) -> None:
    started = time.monotonic()
    wait_for(lambda: {"host-a", "host-b"} <= set(site.peers("c")), timeout=10)
    peers = site.peers("c")
    assert {peers["host-a"]["source"], peers["host-b"]["source"]} == {"lan"}
    assert any(address.startswith("10.231.0.") for address in peers["host-a"]["direct_addresses"])
    assert "host-d" not in peers  # d is not on the switch and c is not on d's list
    assert time.monotonic() - started < 10


def test_store_summaries_spare_the_hosts_that_lack_a_path(site: Site, closure: Path) -> None:
    """b asks for the closure's narinfos before anyone else: a and e hold it; c holds nothing and its
    summary says so, so c is never asked (e and f, a closed fleet, answer no stranger, their summaries
    included: they are asked as before)."""
    wait_for(lambda: _metric(site.metrics("b"), 'peerix_summaries_fetched_total{result="ok"}') >= 2, timeout=10)
    asked_c = 'peerix_peer_requests_total{kind="narinfo",result="not-found"}'
    before = _metric(site.metrics("c"), asked_c)
    paths = closure_of(closure)
    for path in paths:
        assert "NarHash:" in site.hosts["b"].get(f"http://127.0.0.1:{PORT}/{Path(path).name[:32]}.narinfo")
    assert _metric(site.metrics("c"), asked_c) == before
    assert _metric(site.metrics("b"), 'peerix_summary_questions_total{outcome="saved"}') >= 1
    assert _metric(site.metrics("b"), 'peerix_summary_questions_total{outcome="claimed-too-little"}') == 0
    assert "store summary fetched" in site.log("b")
    # e and f said they publish none to b, once each: not asked again for the same generation
    assert _metric(site.metrics("b"), 'peerix_summaries_fetched_total{result="none"}') == 2


def test_closure_on_one_host_is_substituted_by_nix_on_another(site: Site, closure: Path, tmp_path: Path) -> None:
    result = substitute(site, "c", closure, tmp_path)
    assert result.returncode == 0, result.stderr
    copied = path_info(closure, store=str(tmp_path / "client-c"), recursive=True)
    assert sorted(copied) == closure_of(closure)
    assert all(site.public_key("c").split(":")[0] + ":" in " ".join(i["signatures"]) for i in copied.values())
    assert "served nar" in site.log("a") and "fetched nar" in site.log("c")
    table = site.hosts["c"].run(*_cli("peers")).stdout
    assert "host-a" in table and "lan" in table and " ok, 0 failed" in table


def test_nars_between_hosts_take_the_fast_path_and_strangers_get_nothing_from_it(site: Site, closure: Path,
                                                                                tmp_path: Path) -> None:
    before = _metric(site.metrics("b"), 'peerix_fast_path_ranges_total{result="ok"}')
    result = substitute(site, "b", closure, tmp_path)  # Nix checks every NAR against its NarHash
    assert result.returncode == 0, result.stderr
    paths = closure_of(closure)
    assert _metric(site.metrics("b"), 'peerix_fast_path_ranges_total{result="ok"}') - before == len(paths)
    assert _metric(site.metrics("b"), 'peerix_fast_path_ranges_total{result="fallback"}') == 0
    assert "offered the fast path" in site.log("a") and "fast path listen=0.0.0.0:12306" in site.log("a")
    # The listener serves ticket holders only, and nothing but NARs.
    info = site.hosts["a"].get(f"http://127.0.0.1:{PORT}/{Path(paths[0]).name[:32]}.narinfo")
    url = next(line.split(": ")[1] for line in info.splitlines() if line.startswith("URL: "))
    fast_path = f"http://{site.hosts['a'].addresses[0]}:12306"
    stranger = site.hosts["b"]
    asks = {"no ticket": [f"{fast_path}/store/{url}"],
            "forged ticket": ["-H", "x-peerix-ticket: 99999999999.00", f"{fast_path}/store/{url}"],
            "dashboard": [f"{fast_path}/dashboard"],
            "narinfo": [f"{fast_path}/store/{Path(paths[0]).name[:32]}.narinfo"]}
    answers = {what: stranger.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args).stdout
               for what, args in asks.items()}
    assert answers == {"no ticket": "403", "forged ticket": "403", "dashboard": "404", "narinfo": "404"}
    assert _metric(site.metrics("a"), 'peerix_fast_path_refused_total{reason="bad-ticket"}') == 1


def _metric(text: str, line_prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))


def test_host_outside_the_switch_is_reached_through_peer(site: Site, closure: Path, tmp_path: Path) -> None:
    # a does not list d, so its own announcements never reach d: d must go on asking it, not forget it
    time.sleep(max(0.0, site.started["d"] + 3.5 - time.monotonic()))  # past lan_expiry since d started
    wait_for(lambda: "host-a" in site.peers("d"), timeout=10)
    assert "lan peer expired" not in site.log("d")
    assert "targets=- static=10.232.0.1" in site.log("d")  # --no-lan: no multicast, no broadcast
    assert site.peers("d")["host-a"]["source"] == "static"
    assert set(site.peers("d")) == {"host-a"}
    result = substitute(site, "d", closure, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path_info(closure, store=str(tmp_path / "client-d"), recursive=True)) == closure_of(closure)


def test_forged_stale_replayed_and_garbage_packets_are_dropped(site: Site) -> None:
    a_id = next(p["peer_id"] for p in site.peers("c").values() if p["name"] == "host-a")
    c_address = "10.231.0.4"
    impostor = nacl.signing.SigningKey.generate()
    forged = encode(Announcement(EndpointAddress(a_id, ("10.231.0.3:1",)), "evil", time.time()), impostor)
    stranger = nacl.signing.SigningKey.generate()
    stranger_id = bytes(stranger.verify_key).hex()
    older, newer = (encode(Announcement(EndpointAddress(stranger_id, ("10.231.0.3:9",)), "stranger", time.time() + i),
                           stranger) for i in (0, 1))
    stale = encode(Announcement(EndpointAddress(stranger_id, ()), "stranger", time.time() - 3600), stranger)
    packets = [forged, newer, newer, older, stale, b"PXL1garbage" + bytes(64), b"x" * 2000]
    before = _drops(site.metrics("c"))
    _send_from(site.hosts["b"], c_address, packets)

    def dropped() -> bool:
        after = _drops(site.metrics("c"))
        return all(after.get(reason, 0) - before.get(reason, 0) == 1
                   for reason in ("unsigned", "replayed", "stale", "malformed", "oversized"))

    wait_for(dropped, timeout=5)
    peers = site.peers("c")
    assert "stranger" in peers and "evil" not in peers
    assert "10.231.0.3:1" not in peers["host-a"]["direct_addresses"]


def test_with_a_fleet_token_hosts_without_it_are_neither_used_nor_answered(site: Site, closure: Path,
                                                                           tmp_path: Path) -> None:
    """f holds the fleet token: of all the hosts on the switch it knows e alone, which proves the token, and
    its Nix gets the closure from e. c, without the token, hears e (the announcement is signed as ever) and
    asks it, and e answers c as it answers an unknown path."""
    wait_for(lambda: "host-e" in site.peers("f"), timeout=10)
    wait_for(lambda: _drops(site.metrics("f")).get("unproven", 0) >= 3, timeout=10)  # a, b and c, at least once
    peers = site.peers("f")
    assert set(peers) == {"host-e"}, peers
    assert peers["host-e"]["admitted"] == "fleet token"
    assert site.hosts["f"].run(*_cli("peers")).stdout.count("yes (fleet token)") == 1
    result = substitute(site, "f", closure, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path_info(closure, store=str(tmp_path / "client-f"), recursive=True)) == closure_of(closure)
    assert "served nar" in site.log("e")

    wait_for(lambda: "host-e" in site.peers("c"), timeout=10)
    why = json.loads(site.hosts["c"].run(*_cli("why", str(closure), "--json"), check=False).stdout)
    answers = {peer["peer_id"]: peer["result"] for peer in why["peers"]}
    assert answers[site.peers("c")["host-e"]["peer_id"]] == "not-found"
    assert answers[site.peers("c")["host-a"]["peer_id"]] == "ok"
    assert 'peerix_peers_refused_total{alpn="/peerix/narinfo/1"}' in site.metrics("e")
    assert "refused peer=" in site.log("e")

    # A packet whose proof is of another token is dropped as such, whoever signed it.
    stranger = nacl.signing.SigningKey.generate()
    before = _drops(site.metrics("f")).get("wrong-token", 0)
    _send_from(site.hosts["b"], site.hosts["f"].addresses[0], [encode(Announcement(
        EndpointAddress(bytes(stranger.verify_key).hex(), ("10.231.0.3:9",)), "guesser", time.time()), stranger,
        b"a-guess-at-the-fleet-token")])
    wait_for(lambda: _drops(site.metrics("f")).get("wrong-token", 0) == before + 1, timeout=5)
    assert "guesser" not in site.peers("f")


def test_a_restarted_host_is_known_again_at_once(site: Site, closure: Path) -> None:
    """Its first announcement carries a new incarnation: c probes its connections to a's old process
    and drops them before any request waits on them."""
    c, a_id = site.hosts["c"], site.peers("c")["host-a"]["peer_id"]
    narinfo = c.get(f"http://127.0.0.1:{PORT}/{Path(closure_of(closure)[0]).name[:32]}.narinfo")
    nar = f"http://127.0.0.1:{PORT}/" + next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))
    fetch_nar = ("curl", "-sf", "--max-time", "5", "-o", "/dev/null", nar)
    c.run(*fetch_nar)  # c now holds connections to a
    old = site.hosts["a"].processes.pop()
    old.kill()
    old.wait()
    site.start("a")
    wait_for(lambda: "unheard when probed" in site.log("c"), timeout=5)
    assert f"lan peer restarted peer={a_id[:10]}" in site.log("c")
    started = time.monotonic()
    c.run(*fetch_nar)
    assert time.monotonic() - started < 1
    assert "reason=unheard\n" not in site.log("c")  # no request had to find the dead connection itself


def test_a_host_that_goes_away_expires(site: Site) -> None:
    wait_for(lambda: "host-b" in site.peers("a"), timeout=10)
    site.hosts["b"].stop()
    started = time.monotonic()
    wait_for(lambda: "host-b" not in site.peers("a"), timeout=10)
    assert 2 <= time.monotonic() - started <= 8  # expiry is 3 s of silence, checked every 0.5 s interval
    assert "lan peer expired" in site.log("a")


def _drops(metrics: str) -> dict[str, float]:
    prefix = 'peerix_lan_packets_dropped_total{reason="'
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1])
            for line in metrics.splitlines() if line.startswith(prefix)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "peerix.cli", *args]


def _send_from(host: Host, address: str, packets: list[bytes]) -> None:
    """Send raw datagrams from inside another host's namespace."""
    script = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for packet in json.load(sys.stdin):\n"
        f"    s.sendto(bytes.fromhex(packet), ({address!r}, {PORT}))\n"
    )
    subprocess.run(host.command(sys.executable, "-c", script), input=json.dumps([p.hex() for p in packets]).encode(),
                   check=True, cwd=ROOT, timeout=30)
