"""Benchmark: what admission (`peers = fleet`) adds to a peer request, beside the narinfo answer itself.

  check      Admission.admits in the daemon's process, with 1,000 tracker members:
             for a member, and for a stranger (who is then answered not-found)
  guard      the admission guard in front of a handler that returns at once, against the bare handler:
             what a member's request pays, per request
  narinfo    narinfo over iroh on loopback from an endpoint that is a tracker member: host A answers its
             fleet only (a token tracker: `fleet` by default), host B, holding the same path, answers
             anyone (`--peers any`); requests alternate between them on one kept connection each

Target: admission < 50 us per peer request. The narinfo figures put it beside the answer it guards;
their difference is noise at this scale (the guard costs about a microsecond).
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.cli.localfleet import Host, LocalFleet, wait_until  # noqa: E402
from peerix.net import wire  # noqa: E402
from peerix.net.endpoint import EndpointAddress, EndpointSettings, PeerEndpoint  # noqa: E402
from peerix.net.tracker_protocol import ANNOUNCE_PATH, sign  # noqa: E402
from peerix.swarm.admission import Admission  # noqa: E402
from peerix.telemetry.metrics import Metrics  # noqa: E402

from harness import ROOT, run, workdir  # noqa: E402


def per_call_us(call, count: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count * 1e6


def in_process(count: int) -> dict[str, float]:
    """Microseconds per admission check and per guarded request, the median of 5 rounds each."""
    admission = Admission("fleet", Metrics(), fleet_token=True)
    members = [os.urandom(32).hex() for _ in range(1000)]
    admission.update("token", frozenset(members), "v1")
    member, stranger = members[500], os.urandom(32).hex()

    async def handler(peer_id: str, stream: object) -> None:
        return None

    guarded = admission.guard({wire.NARINFO_ALPN: handler})[wire.NARINFO_ALPN]

    async def requests(serve, n: int) -> float:  # noqa: ANN001
        started = time.perf_counter()
        for _ in range(n):
            await serve(member, None)
        return (time.perf_counter() - started) / n * 1e6

    def guard_overhead() -> float:
        bare, with_guard = asyncio.run(requests(handler, count)), asyncio.run(requests(guarded, count))
        return with_guard - bare

    return {name: statistics.median(measure() for _ in range(5)) for name, measure in (
        ("check, member", lambda: per_call_us(lambda: admission.admits(member), count)),
        ("check, stranger", lambda: per_call_us(lambda: admission.admits(stranger), count)),
        ("guard, member's request", guard_overhead),
    )}


async def narinfo_latencies(member: nacl.signing.SigningKey, hosts: list[Host], hash_part: str, rounds: int,
                            per_round: int) -> dict[str, list[float]]:
    """Seconds per narinfo answer from each host, alternating which goes first each round."""
    endpoint = await PeerEndpoint.start(bytes(member), EndpointSettings(
        bind="127.0.0.1:0", relays=False, discovery=False, connect_timeout=5), {})
    request = wire.encode_frame({"hash": hash_part})
    targets = {}
    for host in hosts:
        network = host.health()["network"]
        targets[host.name] = EndpointAddress(network["peer_id"], tuple(network["direct_addresses"]))
    latencies: dict[str, list[float]] = {host.name: [] for host in hosts}
    try:
        for number in range(rounds + 1):  # the first round warms the connections up and is not counted
            for name in (list(targets) if number % 2 else list(reversed(targets))):
                for _ in range(per_round):
                    started = time.perf_counter()
                    _, answer = await endpoint.request(targets[name], wire.NARINFO_ALPN, request, wire.read_frame)
                    if answer.get("status") != "ok":
                        sys.exit(f"{name} answered {answer}: the member was not admitted")
                    if number:
                        latencies[name].append(time.perf_counter() - started)
    finally:
        await endpoint.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()

    print("admission in the process...", flush=True)
    local = in_process(args.checks)

    path = run("nix-build", "--no-out-link", "-E",
               f'import {ROOT}/peerix/cli/mk-derivation.nix "admission-bench" "tiny" "echo tiny > $out"').strip()
    work = workdir("admission")
    fleet = LocalFleet(work, log_level="warning")
    token = work / "network.token"
    token.write_text("the-admission-bench-network-token\n")
    token.chmod(0o600)
    member = nacl.signing.SigningKey.generate()
    try:
        print("hosts: a token tracker, A (fleet) and B (any) holding one path, a member asking...", flush=True)
        fleet.start_tracker("--token-file", str(token))
        a, b = fleet.host("a"), fleet.host("b")
        for host, extra in ((a, ()), (b, ("--peers", "any"))):
            host.give(path)
            host.start("--tracker-token-file", str(token), "--fleet-sync", "0.5", *extra)
        body = json.dumps({"name": "member", "addresses": {"direct": []}, "hashes": []}).encode()
        headers = {**sign(member, "POST", ANNOUNCE_PATH, body), "content-type": "application/json",
                   "authorization": "Bearer the-admission-bench-network-token"}
        httpx.post(fleet.tracker_url + ANNOUNCE_PATH, content=body, headers=headers, timeout=5).raise_for_status()
        wait_until(lambda: a.health()["network"]["admission"]["tracker_members"] == 3, "A to list the member")
        assert a.health()["network"]["admission"]["mode"] == "fleet"
        assert b.health()["network"]["admission"]["mode"] == "any"
        print(f"narinfo over iroh: {args.rounds} rounds of {args.per_round} requests to each host...", flush=True)
        latencies = asyncio.run(narinfo_latencies(member, [a, b], Path(path).name[:32], args.rounds, args.per_round))
    finally:
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)

    print()
    for name, us in local.items():
        print(f"{name:28} {us:8.2f} us")
    fleet_ms, any_ms = (statistics.median(latencies[name]) * 1000 for name in ("a", "b"))
    print(f"{'narinfo, A (peers = fleet)':28} {fleet_ms * 1000:8.0f} us")
    print(f"{'narinfo, B (peers = any)':28} {any_ms * 1000:8.0f} us  A/B {fleet_ms / any_ms:.2f}x")
    worst = max(local.values())
    print(f"admission per peer request: {worst:.2f} us = {worst / (any_ms * 1000):.2%} of a narinfo answer; "
          f"target < 50 us: {'ok' if worst < 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
