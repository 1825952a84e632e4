"""Benchmark: the tracker holding a fleet's worth of store paths.

100 peers announce 100,000 hashes each, drawn from a pool of 1,000,000 (heavy overlap, as in a real
fleet: every hash is held by ten peers on average), to a real `peerix-tracker serve` on loopback
with its SQLite file on disk. Measured, with targets:
  full     each peer's first full announce of 100k hashes (signed request to answer)   < 2 s
  delta    a 1,000-hash delta (500 added, 500 removed) on a 100k set                    < 50 ms
  single   GET /api/v1/lookup/<hash>, 32 clients back to back (closed loop), p99        < 5 ms
  batch    POST /api/v1/lookup with 1,000 hashes, 4 clients back to back, p99           < 50 ms
  and the database's size and the tracker's peak RSS (< 300 MB).
Also timed through the daemon's TrackerClient (signing, JSON, diffing, its state file). Lookups run
--runs times for --seconds each; a figure is the median of its runs. The load generator is a raw
asyncio HTTP/1.1 client in this process (its CPU cost per request is printed); it shares the
machine's cores with the tracker, so the lookup figures are the tracker's worst case.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.net.tracker_client import PeerAddresses, TrackerClient  # noqa: E402
from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, peer_id, sign  # noqa: E402
from peerix.nix import nix32  # noqa: E402

from harness import free_port, median, peak_rss_mib, process, workdir  # noqa: E402

PEERS = 100
OPEN_RATE = 2000  # single lookups a second in the open-loop run: 32 daemons at 60/s each
PER_PEER = 100_000
POOL = 1_000_000


def random_pool(count: int, rng: random.Random) -> list[str]:
    """Distinct random hash parts (any 32 nix32 characters make one)."""
    text = "".join(rng.choices(nix32.ALPHABET, k=32 * count * 11 // 10))
    return list(dict.fromkeys(text[i:i + 32] for i in range(0, len(text), 32)))[:count]


def announce_body(name: str, key: nacl.signing.SigningKey, **change: object) -> bytes:
    addresses = {"endpoint_id": peer_id(key), "direct": ["192.0.2.1:4433"]}
    return json.dumps({"name": name, "addresses": addresses, **change}, separators=(",", ":")).encode()


def post_signed(http: httpx.Client, key: nacl.signing.SigningKey, body: bytes) -> tuple[float, dict]:
    """Send a signed announce (body already encoded); seconds from request to answer, and the answer."""
    headers = {**sign(key, "POST", ANNOUNCE_PATH, body), "content-type": "application/json"}
    started = time.perf_counter()
    response = http.post(ANNOUNCE_PATH, content=body, headers=headers)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        sys.exit(f"announce failed: {response.status_code} {response.text[:300]}")
    return seconds, response.json()


async def load(port: int, requests: list[bytes], clients: int, seconds: float,
               rate: float | None = None) -> tuple[list[float], float]:
    """`clients` keep-alive connections sending `requests`: back to back (closed loop), or at `rate` requests a
    second in all (open loop; a latency then counts from when the request was due, so a slow answer also
    delays the next); the latencies and the client's CPU seconds."""
    latencies: list[float] = []
    cpu_started = time.process_time()

    async def client(rng: random.Random) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        deadline = time.perf_counter() + seconds
        interval = clients / rate if rate else 0.0
        due = time.perf_counter() + rng.random() * interval
        while (started := time.perf_counter()) < deadline:
            if rate:
                if due > started:
                    await asyncio.sleep(due - started)
                started, due = due, due + interval
            writer.write(rng.choice(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"lookup failed: {head[:200]!r}")
            length_at = head.lower().index(b"content-length:") + 15
            await reader.readexactly(int(head[length_at:head.index(b"\r\n", length_at)]))
            latencies.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(client(random.Random(i)) for i in range(clients)))
    return latencies, time.process_time() - cpu_started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each lookup run")
    parser.add_argument("--peers", type=int, default=PEERS)
    args = parser.parse_args()

    rng = random.Random(1)
    print(f"making a pool of {POOL:,} hashes...", flush=True)
    pool = random_pool(POOL, rng)
    work = workdir("tracker")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = work / "tracker.db"
    command = [sys.executable, "-m", "tracker.cli", "serve", "--db", str(db), "--listen", f"127.0.0.1:{port}",
               "--address-rate", "1000000", "--address-burst", "1000000", "--peer-rate", "1000", "--peer-burst", "1000"]
    figures: dict[str, list[float]] = {}
    with process(command, work / "tracker.log", url + "/health") as tracker, httpx.Client(base_url=url,
                                                                                        timeout=60) as http:
        keys = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(args.peers)]
        sets = [rng.sample(pool, PER_PEER) for _ in keys]
        fulls, seqs = [], []
        for number, (key, hashes) in enumerate(zip(keys, sets, strict=True), 1):
            seconds, answer = post_signed(http, key, announce_body(f"peer-{number}", key, hashes=hashes))
            fulls.append(seconds)
            seqs.append(answer["seq"])
            if number % 10 == 0:
                print(f"  {number} peers announced; last full announce {seconds * 1000:.0f} ms, "
                      f"database {db_size(db) / 2**20:.0f} MiB", flush=True)
        figures["full"] = fulls

        held = set(sets[0])
        spare = [h for h in pool if h not in held]
        deltas = []
        for step in range(20):
            added, removed = spare[step * 500:(step + 1) * 500], sets[0][step * 500:(step + 1) * 500]
            body = announce_body("peer-1", keys[0], since=seqs[0], added=added, removed=removed)
            seconds, answer = post_signed(http, keys[0], body)
            seqs[0] = answer["seq"]
            deltas.append(seconds)
        figures["delta"] = deltas

        client_full, client_delta = asyncio.run(through_client(url, pool, rng, work))

        single = [f"GET {LOOKUP_PATH}/{h} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for h in rng.sample(pool, 100_000)]
        batches = []
        for _ in range(50):
            body = json.dumps({"hashes": rng.sample(pool, 1000)}).encode()
            batches.append(f"POST {LOOKUP_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        asyncio.run(load(port, single, 32, 1.0))  # warm up
        for run in range(args.runs):
            for name, requests, clients, rate in (("single", single, 32, None), ("open", single, 32, OPEN_RATE),
                                                  ("batch", batches, 1, None), ("batch4", batches, 4, None)):
                server_cpu = cpu_seconds(tracker.pid)
                latencies, cpu = asyncio.run(load(port, requests, clients, args.seconds, rate))
                server_cpu = cpu_seconds(tracker.pid) - server_cpu
                for key, value in (("p50", percentile(latencies, 0.5)), ("p99", percentile(latencies, 0.99)),
                                   ("rate", len(latencies) / args.seconds), ("cpu", cpu / len(latencies)),
                                   ("server", server_cpu / len(latencies))):
                    figures.setdefault(f"{name} {key}", []).append(value)
            print(f"lookup run {run + 1}/{args.runs} done", flush=True)
        rss = peak_rss_mib(tracker.pid)
        size = db_size(db)

    ms = 1000
    print(f"\n{args.peers} peers x {PER_PEER:,} hashes from a pool of {POOL:,}; lookups: medians of {args.runs} "
          f"runs of {args.seconds:g} s")
    rows = [
        ("full announce, 100k", f"median {median(fulls) * ms:.0f} ms, p90 {percentile(fulls, 0.9) * ms:.0f} ms, "
                                f"max {max(fulls) * ms:.0f} ms, last 10 {median(fulls[-10:]) * ms:.0f} ms",
         max(fulls) < 2),
        ("delta, 1k", f"median {median(deltas) * ms:.1f} ms, max {max(deltas) * ms:.1f} ms", median(deltas) < 0.05),
        ("single lookup x32", f"p50 {median(figures['single p50']) * ms:.2f} ms, "
                              f"p99 {median(figures['single p99']) * ms:.2f} ms, "
                              f"{median(figures['single rate']):,.0f}/s", median(figures["single p99"]) < 0.005),
        (f"single, {OPEN_RATE:,}/s", f"p50 {median(figures['open p50']) * ms:.2f} ms, "
                                    f"p99 {median(figures['open p99']) * ms:.2f} ms (32 clients, open loop)",
         median(figures["open p99"]) < 0.005),
        ("batch 1k lookup", f"p50 {median(figures['batch p50']) * ms:.1f} ms, "
                            f"p99 {median(figures['batch p99']) * ms:.1f} ms, {median(figures['batch rate']):,.0f}/s",
         median(figures["batch p99"]) < 0.05),
        ("batch 1k lookup x4", f"p50 {median(figures['batch4 p50']) * ms:.1f} ms, "
                               f"p99 {median(figures['batch4 p99']) * ms:.1f} ms, "
                               f"{median(figures['batch4 rate']):,.0f}/s", median(figures["batch4 p99"]) < 0.05),
        ("tracker peak RSS", f"{rss:.0f} MiB", rss < 300),
        ("database", f"{size / 2**20:.0f} MiB", True),
    ]
    for name, text, ok in rows:
        print(f"  {name:20} {text:70} {'ok' if ok else 'MISSED'}")
    print(f"  via TrackerClient: full announce of 100k {client_full * ms:.0f} ms, "
          f"1k delta {client_delta * ms:.0f} ms (packing, diffing and its state file included)")
    print(f"  CPU per request, tracker: single {median(figures['single server']) * 1e6:.0f} µs, "
          f"batch {median(figures['batch server']) * 1e3:.1f} ms; load generator: single "
          f"{median(figures['single cpu']) * 1e6:.0f} µs, batch {median(figures['batch cpu']) * 1e6:.0f} µs")
    print(f"  single lookup p99 of each run: {', '.join(f'{v * ms:.2f}' for v in figures['single p99'])} ms")
    print(f"work directory: {work}")


async def through_client(url: str, pool: list[str], rng: random.Random, work: Path) -> tuple[float, float]:
    """A daemon's view: one more peer's full announce and a 1k delta through TrackerClient."""
    client = TrackerClient(url, os.urandom(32), work / "client-state", timeout=60)
    addresses = PeerAddresses(client.peer_id, ("192.0.2.2:4433",))
    hashes = rng.sample(pool, PER_PEER)
    started = time.perf_counter()
    await client.announce(hashes, addresses, "client")
    full = time.perf_counter() - started
    held = set(hashes)
    changed = hashes[500:] + [h for h in rng.sample(pool, 1500) if h not in held][:500]
    started = time.perf_counter()
    await client.announce(changed, addresses, "client")
    delta = time.perf_counter() - started
    await client.deregister()
    await client.aclose()
    return full, delta


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (all its threads, user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_size(db: Path) -> int:
    return sum(path.stat().st_size for path in (db, Path(f"{db}-wal")) if path.exists())


if __name__ == "__main__":
    main()
