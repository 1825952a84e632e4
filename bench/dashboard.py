"""Benchmark: the dashboards stay fast with 1,000 peers and 10,000 recent transfers.

A daemon knows 1,000 peers (signed LAN announcements from this process, as 1,000 hosts would send them)
and has 10,000 transfers in its activity file; a tracker holds 1,000 announced peers. Each page and JSON
endpoint is asked `--rounds` times on one kept-alive connection, client and servers pinned to one CPU (a
wakeup across CPUs costs ~35 us here), the pages in a new order each round. References, in the same run:
the same routes on a daemon and a tracker that hold nothing, and each server's cheapest route
(/nix-cache-info, /health).
  target: every page and endpoint answers in < 50 ms (median; the p99 is printed beside it)
Also: how long the daemon's minute job takes to write 10,000 transfers to activity.json (it runs on the
event loop), and the file's size.
"""

import argparse
import json
import os
import random
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.net import lan  # noqa: E402
from peerix.net.endpoint import EndpointAddress  # noqa: E402
from peerix.net.tracker_protocol import ANNOUNCE_PATH, peer_id, sign  # noqa: E402
from peerix.nix import nix32  # noqa: E402
from peerix.telemetry.activity import UPSTREAM, Activity  # noqa: E402

from harness import free_port, median, peerix_serve, process, run, workdir  # noqa: E402

PEERS, TRANSFERS = 1000, 10_000
TARGET_MS = 50
MS = 1000
CPU = {0}


def activity_file(state: Path, peers: list[str]) -> dict[str, float]:
    """10,000 finished transfers as a busy host would have them: fetches from two or three named peers
    or the upstream, uploads of several pieces, each appended to the journal as it ends. Returns what
    the journal costs per transfer and what the minute's save of the totals costs."""
    rng = random.Random(18)
    state.mkdir(parents=True, exist_ok=True)
    activity = Activity.load(state / "activity.json")
    journaling = 0.0
    activity.peer_name = lambda peer: f"host-{peers.index(peer)}" if peer in peers else None
    for number in range(TRANSFERS):
        path = f"/nix/store/{''.join(rng.choices('0123456789abcdfghijklmnpqrsvwxyz', k=32))}-package-{number}"
        size = rng.randint(1 << 10, 256 << 20)
        if number % 4:
            fetch = activity.fetch(path, size)
            for source in rng.sample(peers, rng.randint(1, 3)) if number % 10 else [UPSTREAM]:
                fetch.credit(source, size // 3)
            fetch.advance(size)
            started = time.perf_counter()
            activity.finish(fetch, "complete" if number % 50 else "failed", "2 peers, 1 resumed" if number % 7 else "")
            journaling += time.perf_counter() - started
        else:
            receiver = rng.choice(peers)
            for piece in range(rng.randint(1, 8)):
                upload = activity.upload(receiver, path, size)
                upload.advance(size // 8)
                activity.piece_done(upload, "stopped" if piece == 5 else "complete")
    started = time.perf_counter()
    activity._settle(float("inf"))  # every upload done, as if JOIN_WINDOW had passed: into the journal
    journaling += time.perf_counter() - started
    started = time.perf_counter()
    activity.save(state / "activity.json")
    saving = time.perf_counter() - started
    activity.close()
    assert len(activity.recent) == TRANSFERS, len(activity.recent)
    started = time.perf_counter()
    assert len(Activity.load(state / "activity.json").recent) == TRANSFERS
    return {"journal_us": journaling / TRANSFERS * 1e6, "save_ms": saving * MS,
            "load_ms": (time.perf_counter() - started) * MS,
            "journal_mib": sum(f.stat().st_size for f in state.glob("transfers.jsonl*")) / 2**20}


def announce_on_lan(port: int, keys: list[nacl.signing.SigningKey]) -> None:
    """Each key's signed LAN announcement to the daemon's discovery port, as its host would send it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for number, key in enumerate(keys):
            address = EndpointAddress(peer_id(key), (f"192.0.2.{number % 250 + 1}:{12305 + number}",), None, "1")
            sock.sendto(lan.encode(lan.Announcement(address, f"host-{number}", time.time()), key), ("127.0.0.1", port))
            if number % 20 == 19:
                time.sleep(0.02)  # the daemon's socket buffer holds a few hundred


def announce(url: str, keys: list[nacl.signing.SigningKey], sets: list[list[str]]) -> None:
    """Each key's full announce to the tracker, signed as its daemon would sign it."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for number, (key, hashes) in enumerate(zip(keys, sets, strict=True)):
            body = json.dumps({"name": f"host-{number}", "hashes": hashes, "addresses": {
                "endpoint_id": peer_id(key), "direct": [f"192.0.2.{number % 250 + 1}:12305"]}}).encode()
            headers = {**sign(key, "POST", ANNOUNCE_PATH, body), "content-type": "application/json"}
            http.post(ANNOUNCE_PATH, content=body, headers=headers).raise_for_status()


def tracker(db: Path) -> tuple[str, list[str]]:
    port = free_port()
    command = [sys.executable, "-m", "tracker.cli", "--log-level", "warning", "serve", "--db", str(db), "--listen",
               f"127.0.0.1:{port}", "--address-rate", "1000000", "--address-burst", "1000000", "--peer-rate", "1000",
               "--peer-burst", "1000"]
    return f"http://127.0.0.1:{port}", command


def timings(base: str, paths: list[str], rounds: int, empty: bool) -> dict[str, list[float]]:
    """Seconds for each path, `rounds` times, on one kept-alive connection, in a new order each round. A
    server that holds nothing may answer 404 (no such peer); one that holds the fleet answers every path."""
    found: dict[str, list[float]] = {path: [] for path in paths}
    order = list(paths)
    with httpx.Client(base_url=base, timeout=30) as http:
        for path in paths:  # warm up
            if (status := http.get(path).status_code) != 200 and not (empty and status == 404):
                sys.exit(f"{base}{path} answered {status}")
        for _ in range(rounds):
            random.shuffle(order)
            for path in order:
                started = time.perf_counter()
                response = http.get(path)
                found[path].append(time.perf_counter() - started)
                assert response.status_code < 500, response.text
    return found


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    os.sched_setaffinity(0, CPU)
    work = workdir("dashboard")
    keys = [nacl.signing.SigningKey.generate() for _ in range(PEERS)]
    ids = [peer_id(key) for key in keys]
    files = activity_file(work / "full" / "state", ids)
    results: list[tuple[str, str, list[float], list[float]]] = []  # (server, route, loaded, empty)
    with ExitStack() as stack:
        daemons = {}
        for kind in ("full", "empty"):
            store = work / kind / "store"
            run("nix-store", "--store", str(store), "--init")
            lan_port, quiet = free_port(), free_port()
            url, proc = stack.enter_context(peerix_serve(str(store), work / kind, "--lan-port", str(lan_port),
                                                         "--peer", f"127.0.0.1:{quiet}", "--lan-expiry", "1h"))
            os.sched_setaffinity(proc.pid, CPU)
            daemons[kind] = url
            for _ in range(5 if kind == "full" else 0):  # again, as LAN hosts do, until every one was heard
                announce_on_lan(lan_port, keys)
                time.sleep(1)
                if len(httpx.get(url + "/api/v1/peers").json()["peers"]) == PEERS:
                    break
            else:
                if kind == "full":
                    sys.exit("the daemon did not hear every LAN announcement")
        host_paths = ["/dashboard", f"/dashboard?page={TRANSFERS // 50}&peers={PEERS // 50}", "/api/v1/activity",
                      f"/api/v1/transfers?offset={TRANSFERS - 50}&limit=50", "/api/v1/peers", "/nix-cache-info"]
        loaded, empty = (timings(daemons[kind], host_paths, args.rounds, kind == "empty") for kind in ("full", "empty"))
        results += [("daemon", path, loaded[path], empty[path]) for path in host_paths]

        rng = random.Random(1)
        hashes = ["".join(rng.choices(nix32.ALPHABET, k=32)) for _ in range(PEERS * 3 + 1)]
        sets = [hashes[i * 3 + 1:i * 3 + 4] + hashes[:1] for i in range(PEERS)]  # and one path every peer holds
        urls = []
        for name in ("full", "empty"):
            url, command = tracker(work / f"tracker-{name}.db")
            os.sched_setaffinity(stack.enter_context(process(command, work / f"tracker-{name}.log",
                                                             url + "/health")).pid, CPU)
            urls.append(url)
        announce(urls[0], keys, sets)
        tracker_paths = ["/", f"/?page={PEERS // 100}", f"/search?q=/nix/store/{hashes[0]}-x", f"/peers/{ids[500]}",
                         "/api/v1/stats", "/api/v1/peers", "/health"]
        loaded, empty = (timings(url, tracker_paths, args.rounds, url == urls[1]) for url in urls)
        results += [("tracker", path, loaded[path], empty[path]) for path in tracker_paths]

    print(f"\n{PEERS:,} peers, {TRANSFERS:,} transfers; {args.rounds} requests each, one kept-alive connection, "
          "client and server on one CPU")
    print(f"{'':8} {'route':44} {'median':>8} {'p99':>8} {'empty':>8} {'ratio':>6}  target < {TARGET_MS} ms")
    for server, path, full, none in results:
        ms, tail, reference = median(full) * MS, p99(full) * MS, median(none) * MS
        verdict = "met" if ms < TARGET_MS else "MISSED"
        print(f"{server:8} {path[:44]:44} {ms:7.2f}  {tail:7.2f}  {reference:7.2f}  {ms / reference:5.2f}x  {verdict}")
    print(f"{TRANSFERS:,} transfers in the journal ({files['journal_mib']:.1f} MiB): {files['journal_us']:.0f} us "
          f"each to write as it ends, {files['load_ms']:.0f} ms to read at start; the minute's save of the totals "
          f"{files['save_ms']:.2f} ms")
    print(json.dumps({f"{server} {path}": round(median(full) * MS, 2) for server, path, full, _ in results}))


if __name__ == "__main__":
    main()
