"""Hosts that die and come back: a killed or restarted holder costs milliseconds, not seconds and paths.

Real daemons SIGKILLed and started again on the same ports, a real tracker, real Nix. Each cause
of lost paths has its own test with its time bound, and the churn scenario runs them all at once.
"""

import asyncio
import dataclasses
import os
from pathlib import Path

import httpx
from churn import Churn, build_paths, killed_mid_nar, nar_url, used_again

from peerix.cli.localfleet import LocalFleet, wait_until
from peerix.net.endpoint import EndpointAddress
from peerix.net.tracker_client import PeerAddresses, TrackerClient
from peerix.swarm.candidates import TrackerSource
from peerix.telemetry.metrics import Metrics

from conftest import requires_nix
from nixtools import closure_of, hash_part

pytestmark = requires_nix

SEED = 20
ROUNDS = 10


def test_churn_loses_no_paths(fleet: LocalFleet) -> None:
    """The scenario on a fixed seed: every round a holder dies at a random moment and comes back."""
    churn = Churn(fleet, build_paths(10), SEED)
    rounds = [churn.round(number) for number in range(ROUNDS)]
    attempted, arrived = sum(len(r.paths) for r in rounds), sum(r.arrived for r in rounds)
    report = "\n".join(f"{r.fetcher} <- {len(r.paths)} paths, {r.victim} killed: {r.arrived} arrived in "
                       f"{r.seconds:.1f} s{' ' + r.stderr[-8000:] if r.arrived < len(r.paths) else ''}"
                       for r in rounds)
    assert arrived / attempted >= 0.99, report
    assert churn.corrupt() == 0
    assert not any(r.unrecovered_5xx for r in rounds), report
    assert max(r.seconds for r in rounds) < 60, report


def test_a_sender_killed_mid_nar_costs_under_two_seconds(fleet: LocalFleet, big_path: Path) -> None:
    """With a second holder there, a silent sender is replaced after stall_timeout, not peer_timeout."""
    capped = ("--max-upload-rate", "20M")
    senders = [fleet.host("a"), fleet.host("b")]
    for sender in senders:
        sender.give(str(big_path))
        sender.start(*capped)
        fleet.wait_announced(sender, [str(big_path)])
    c = fleet.host("c")
    c.start("--max-sources", "1")  # one peer at a time; default timeouts (peer_timeout 10 s)
    undisturbed, killed = killed_mid_nar(c, senders, hash_part(big_path), capped)
    assert killed - undisturbed < 2, (undisturbed, killed)
    assert c.metric("peerix_nar_resumes_total") >= 1


def test_a_holder_restarted_on_the_same_ports_is_used_within_a_second(fleet: LocalFleet, closure: Path) -> None:
    """Not 5 s behind a connection to its old process: the fetcher redials at once."""
    a, c = fleet.host("a"), fleet.host("c")
    a.give(str(closure))
    a.start()
    fleet.wait_announced(a, [str(closure)])
    c.start()
    first, second = closure_of(closure)[:2]
    assert httpx.get(f"{c.url}/{hash_part(first)}.narinfo").status_code == 200  # a pooled connection to a
    before = a.health()["network"]
    seconds = used_again(c, a, hash_part(second), ())
    assert seconds < 1, seconds
    after = a.health()["network"]
    ipv4 = [address for address in before["direct_addresses"] if address.startswith("127.")]
    assert ipv4 and ipv4 == [a for a in after["direct_addresses"] if a.startswith("127.")]  # IPv6: iroh's pick
    assert after["incarnation"] != before["incarnation"]


def test_a_nar_whose_holders_failed_arrives_on_the_next_nix_attempt(fleet: LocalFleet, closure: Path) -> None:
    """The NAR is a 503 that Nix retries, not a 404; when the holders are back, neither a remembered
    miss nor their backoff keeps the next attempt from them."""
    holders = [fleet.host("a"), fleet.host("b")]
    for holder in holders:
        holder.give(str(closure))
        holder.start()
        fleet.wait_announced(holder, [str(closure)])
    c = fleet.host("c")
    c.start()  # default miss_ttl: 10 s
    path = closure_of(closure)[0]
    nar_url(c, hash_part(path))  # the narinfo is served...
    for holder in holders:  # ...then its holders die
        holder.process.kill()
        holder.process.wait()
    failed = c.realise(path, check=False, timeout=120)
    assert failed.returncode != 0 and "HTTP error 503" in failed.stderr and "retrying" in failed.stderr
    for holder in holders:
        holder.start()
        fleet.wait_announced(holder, [str(closure)])
    c.realise(path)  # news of their new processes, or a second chance for holders that failed once


def test_a_nar_asked_while_the_tracker_restarts_is_a_503_not_a_404(fleet: LocalFleet, closure: Path) -> None:
    """Nix keeps narinfo for days and asks a restarted daemon for the NAR while the tracker restarts too
    (found by the soak): nobody can say who holds it, so the NAR is a 503 that Nix retries, not a 404 it
    gives up on, and the miss is not remembered: the NAR comes as soon as the tracker is back."""
    a, c = fleet.host("a"), fleet.host("c")
    a.give(str(closure))
    a.start()
    fleet.wait_announced(a, [str(closure)])
    c.start()  # default miss_ttl: 10 s
    url = nar_url(c, hash_part(closure_of(closure)[0]))
    c.stop()
    c.start()
    port = int(fleet.tracker_url.rsplit(":", 1)[1])
    fleet.stop_tracker()
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
    fleet.start_tracker(port=port)
    wait_until(lambda: httpx.get(url, timeout=10).status_code == 200, "the NAR once the tracker is back", 8)


def test_while_the_tracker_is_down_the_holders_it_named_before_are_asked(fleet: LocalFleet, closure: Path) -> None:
    """A NAR whose holder failed once is looked up again; with the tracker down (found by the soak, where
    it restarted), the holders it named before are asked rather than nobody: the NAR comes once the
    holder is back."""
    a, c = fleet.host("a"), fleet.host("c")
    a.give(str(closure))
    a.start()
    fleet.wait_announced(a, [str(closure)])
    c.start()
    url = nar_url(c, hash_part(closure_of(closure)[0]))  # the tracker named a
    a.process.kill()  # killed: the tracker still names it
    a.process.wait()
    assert httpx.get(url, timeout=10).status_code == 503  # a failed: c looks the path up afresh next time
    a.start()
    fleet.stop_tracker()
    wait_until(lambda: httpx.get(url, timeout=10).status_code == 200, "the NAR from a, named before", 10)


async def test_a_tracker_entry_with_a_new_incarnation_reports_a_restart(start_tracker, tmp_path: Path) -> None:
    """A peer's newest record with another incarnation (or, with none, other addresses) is a restart;
    an answer older than the last one seen is not."""
    tracker = start_tracker()
    seed, hashes = os.urandom(32), ["1" * 32]
    holder = TrackerClient(tracker.url, seed, tmp_path / "holder")
    restarted: list[EndpointAddress] = []
    source = TrackerSource(TrackerClient(tracker.url, os.urandom(32), tmp_path / "asker"), Metrics(),
                           on_restart=restarted.append)
    try:
        for incarnation, direct in (("first", "127.0.0.1:4433"), ("first", "127.0.0.1:4433"),
                                    ("second", "127.0.0.1:4433"), (None, "127.0.0.1:4433"),
                                    (None, "127.0.0.1:4434")):
            await holder.announce(hashes, PeerAddresses(holder.peer_id, (direct,), incarnation=incarnation), "h")
            await asyncio.sleep(0.01)  # last_seen moves on
            await source.candidates(hashes[0], fresh=True)
        assert [(a.incarnation, a.direct) for a in restarted] == [("second", ("127.0.0.1:4433",)),
                                                                   (None, ("127.0.0.1:4434",))]
        newest = source.seen[holder.peer_id]
        source.seen[holder.peer_id] = dataclasses.replace(newest, last_seen=newest.last_seen + 60)
        await holder.announce(hashes, PeerAddresses(holder.peer_id, ("127.0.0.1:4435",)), "h")
        await source.candidates(hashes[0], fresh=True)
        assert len(restarted) == 2  # that answer was older than the record already seen
    finally:
        await holder.aclose()
        await source.client.aclose()
