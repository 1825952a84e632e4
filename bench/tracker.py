"""Benchmark: the tracker holding a fleet's worth of store paths, on SQLite and, with --db, on PostgreSQL.

Every phase runs on SQLite and then, given `--db postgresql://...` (a database this benchmark may empty:
it drops the tracker's tables before each phase), on PostgreSQL, in one run, against real
`peerix-tracker serve` processes on loopback, with load from this process. Figures are medians.
  fleet     100 peers announce 100,000 hashes each, drawn from a pool of 1,000,000 (each hash held by ten
            peers on average):
              full     each peer's first full announce (signed request to answer)                  < 2 s
              delta    a 1,000-hash delta (500 added, 500 removed) on a 100k set                    < 50 ms
              single   GET /api/v1/lookup/<hash>, 32 clients back to back (closed loop), p99         < 5 ms
              open     the same at 2,000 lookups/s (open loop), p99                                < 5 ms
              batch    POST /api/v1/lookup with 1,000 hashes, 1 and 4 clients back to back, p99     < 50 ms
  large     1,000 peers x 20,000 hashes (20 M holdings) loaded: single lookups p99 < 5 ms; the database's
            size per million holdings (--no-large skips it: it loads for minutes)
  replicas  (PostgreSQL) two replicas on the fleet's database against one: single lookups per second
            (>= 1.5x), the CPU each lookup costs the replicas, PostgreSQL and the load generator; each
            replica's peak RSS (< 150 MB)
Lookups run --runs times for --seconds each. The load generator is a raw asyncio HTTP/1.1 client that
shares the machine's cores with the trackers and the database: its CPU per request is printed. After a
load, PostgreSQL is vacuumed and analysed, as its autovacuum soon would be.
For a throwaway server: `python tests/postgres.py` prints a URL and runs until Ctrl-C.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.net.tracker_client import PeerAddresses, TrackerClient  # noqa: E402
from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, peer_id, sign  # noqa: E402
from peerix.nix import nix32  # noqa: E402

from harness import free_port, median, peak_rss_mib, process, workdir  # noqa: E402

OPEN_RATE = 2000  # single lookups a second in the open-loop run: 32 daemons at 60/s each
POOL = 1_000_000
MS = 1000


def random_pool(count: int, rng: random.Random) -> list[str]:
    """Distinct random hash parts (any 32 nix32 characters make one)."""
    text = "".join(rng.choices(nix32.ALPHABET, k=32 * count * 11 // 10))
    return list(dict.fromkeys(text[i:i + 32] for i in range(0, len(text), 32)))[:count]


def announce_body(name: str, key: nacl.signing.SigningKey, **change: object) -> bytes:
    addresses = {"endpoint_id": peer_id(key), "direct": ["192.0.2.1:4433"]}
    return json.dumps({"name": name, "addresses": addresses, **change}, separators=(",", ":")).encode()


UNAVAILABLE: list[str] = []  # announces answered 503, sent again a second later as a daemon would


def post_signed(http: httpx.Client, key: nacl.signing.SigningKey, body: bytes) -> tuple[float, dict]:
    """Send a signed announce (body already encoded); seconds from request to answer, and the answer."""
    for _ in range(5):
        headers = {**sign(key, "POST", ANNOUNCE_PATH, body), "content-type": "application/json"}
        started = time.perf_counter()
        response = http.post(ANNOUNCE_PATH, content=body, headers=headers)
        seconds = time.perf_counter() - started
        if response.status_code != 503:
            break
        UNAVAILABLE.append(response.text[:200])
        print(f"  announce answered 503 after {seconds:.1f} s, again in 1 s: {response.text[:120]}", flush=True)
        time.sleep(1)
    if response.status_code != 200:
        sys.exit(f"announce failed: {response.status_code} {response.text[:300]}")
    return seconds, response.json()


async def load(ports: list[int], requests: list[bytes], clients: int, seconds: float,
               rate: float | None = None) -> tuple[list[float], float]:
    """`clients` keep-alive connections, spread over `ports`, sending `requests`: back to back (closed loop),
    or at `rate` requests a second in all (open loop; a latency then counts from when the request was due,
    so a slow answer also delays the next); the latencies and the client's CPU seconds."""
    latencies: list[float] = []
    cpu_started = time.process_time()

    async def client(number: int) -> None:
        rng = random.Random(number)
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[number % len(ports)])
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

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, time.process_time() - cpu_started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (all its threads, user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database(url: str, sql: str) -> list:
    """The rows of a query, or nothing for commands (several, separated by semicolons)."""
    async def rows() -> list:
        connection = await asyncpg.connect(url)
        try:
            return list(await connection.fetch(sql)) if sql.startswith("SELECT") else [await connection.execute(sql)]
        finally:
            await connection.close()

    return asyncio.run(rows())


class Backend:
    """Where the trackers keep their state: a fresh SQLite file, or the PostgreSQL database emptied."""

    def __init__(self, name: str, work: Path, url: str | None = None) -> None:
        self.name, self.work, self.url = name, work, url
        self.files = 0

    def fresh(self) -> str:
        if self.url is None:
            self.files += 1
            return str(self.work / f"tracker-{self.files}.db")
        database(self.url, "DROP TABLE IF EXISTS holdings, paths, peers, totals, claims, schema_version; "
                           "DROP SEQUENCE IF EXISTS peer_versions")
        return self.url

    def settle(self, db: str) -> None:
        if self.url is not None:
            database(db, "VACUUM ANALYZE")

    def size(self, db: str) -> int:
        if self.url is None:
            return sum(path.stat().st_size for path in (Path(db), Path(f"{db}-wal")) if path.exists())
        return database(db, "SELECT pg_database_size(current_database())")[0][0]

    def server_pids(self) -> list[int]:
        """The database's processes serving the trackers (none for SQLite, which lives inside them)."""
        if self.url is None:
            return []
        rows = database(self.url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'peerix-tracker'")
        return [row[0] for row in rows]


@contextmanager
def trackers(db: str, work: Path, count: int = 1) -> Iterator[list[tuple[int, int]]]:
    """`count` trackers on one database; (port, pid) of each."""
    with ExitStack() as stack:
        started = []
        for number in range(count):
            port = free_port()
            command = [sys.executable, "-m", "tracker.cli", "--log-level", "warning", "serve", "--db", db,
                       "--listen", f"127.0.0.1:{port}", "--replica", f"replica-{number}",
                       "--address-rate", "1000000", "--address-burst", "1000000", "--peer-rate", "1000",
                       "--peer-burst", "1000"]
            proc = stack.enter_context(process(command, work / f"tracker-{port}.log",
                                               f"http://127.0.0.1:{port}/health"))
            started.append((port, proc.pid))
        yield started


def announce_all(port: int, keys: list[nacl.signing.SigningKey], sets: list[list[str]],
                 what: str) -> tuple[list[float], list[int]]:
    """Each peer's full announce: their durations and the sequence numbers they got."""
    seconds, seqs = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        for number, (key, hashes) in enumerate(zip(keys, sets, strict=True), 1):
            duration, answer = post_signed(http, key, announce_body(f"peer-{number}", key, hashes=hashes))
            seconds.append(duration)
            seqs.append(answer["seq"])
            if number % max(1, len(keys) // 10) == 0:
                print(f"  {what}: {number} peers announced, last in {duration * MS:.0f} ms", flush=True)
    return seconds, seqs


def lookup_requests(pool: list[str], rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    single = [f"GET {LOOKUP_PATH}/{h} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for h in rng.sample(pool, 100_000)]
    batches = []
    for _ in range(50):
        body = json.dumps({"hashes": rng.sample(pool, 1000)}).encode()
        batches.append(f"POST {LOOKUP_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return single, batches


def fleet_phase(backend: Backend, pool: list[str], args: argparse.Namespace) -> dict[str, float]:
    """100 peers x 100k: announces, deltas, lookups of every kind; the database is left for `replicas`."""
    rng = random.Random(1)
    db = backend.fresh()
    keys = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(args.peers)]
    sets = [rng.sample(pool, 100_000) for _ in keys]
    figures: dict[str, list[float]] = {}
    with trackers(db, backend.work) as [(port, pid)]:
        fulls, seqs = announce_all(port, keys, sets, f"{backend.name} fleet")
        held, seq = set(sets[0]), seqs[0]
        spare = [h for h in pool if h not in held]
        deltas = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for step in range(20):
                added, removed = spare[step * 500:(step + 1) * 500], sets[0][step * 500:(step + 1) * 500]
                body = announce_body("peer-1", keys[0], since=seq, added=added, removed=removed)
                seconds, answer = post_signed(http, keys[0], body)
                seq = answer["seq"]
                deltas.append(seconds)
        client_full, client_delta = asyncio.run(through_client(f"http://127.0.0.1:{port}", pool, rng, backend.work))
        backend.settle(db)
        single, batches = lookup_requests(pool, rng)
        asyncio.run(load([port], single, 32, 1.0))  # warm up
        for run in range(args.runs):
            for name, requests, clients, rate in (("single", single, 32, None), ("open", single, 32, OPEN_RATE),
                                                  ("batch", batches, 1, None), ("batch4", batches, 4, None)):
                server = cpu_seconds(pid)
                latencies, cpu = asyncio.run(load([port], requests, clients, args.seconds, rate))
                server = cpu_seconds(pid) - server
                for key, value in (("p50", percentile(latencies, 0.5)), ("p99", percentile(latencies, 0.99)),
                                   ("rate", len(latencies) / args.seconds), ("client cpu", cpu / len(latencies)),
                                   ("server cpu", server / len(latencies))):
                    figures.setdefault(f"{name} {key}", []).append(value)
            print(f"  {backend.name} fleet: lookup run {run + 1}/{args.runs} done", flush=True)
        rss = peak_rss_mib(pid)
    result = {key: median(values) for key, values in figures.items()}
    result.update({"full": median(fulls), "full max": max(fulls), "delta": median(deltas), "rss": rss,
                   "size": backend.size(db), "client full": client_full, "client delta": client_delta})
    return result


async def through_client(url: str, pool: list[str], rng: random.Random, work: Path) -> tuple[float, float]:
    """A daemon's view: one more peer's full announce and a 1k delta through TrackerClient."""
    client = TrackerClient(url, os.urandom(32), work / f"client-state-{time.monotonic_ns()}", timeout=60)
    addresses = PeerAddresses(client.peer_id, ("192.0.2.2:4433",))
    hashes = rng.sample(pool, 100_000)
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


def replicas_phase(backend: Backend, pool: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Single lookups against one replica and against two on the fleet's database, in alternating order."""
    single, _ = lookup_requests(pool, random.Random(2))
    figures: dict[str, list[float]] = {}
    with trackers(backend.url, backend.work, count=2) as started:
        ports, pids = [port for port, _ in started], [pid for _, pid in started]
        asyncio.run(load(ports, single, 32, 1.0))  # warm up both
        for run in range(args.runs):
            for count in (1, 2) if run % 2 == 0 else (2, 1):
                database_pids = backend.server_pids()
                before = [cpu_seconds(pid) for pid in pids], [cpu_seconds(pid) for pid in database_pids]
                latencies, client_cpu = asyncio.run(load(ports[:count], single, 32, args.seconds))
                replica_cpu = sum(cpu_seconds(pid) for pid in pids) - sum(before[0])
                database_cpu = sum(cpu_seconds(pid) for pid in database_pids) - sum(before[1])
                for key, value in (("rate", len(latencies) / args.seconds), ("p99", percentile(latencies, 0.99)),
                                   ("replica cpu", replica_cpu / len(latencies)),
                                   ("database cpu", database_cpu / len(latencies)),
                                   ("client cpu", client_cpu / len(latencies))):
                    figures.setdefault(f"{count} {key}", []).append(value)
            print(f"  replicas: run {run + 1}/{args.runs} done", flush=True)
        rss = [peak_rss_mib(pid) for pid in pids]
    result = {key: median(values) for key, values in figures.items()}
    result["rss"] = max(rss)
    return result


def large_phase(backend: Backend, args: argparse.Namespace) -> dict[str, float]:
    """1,000 peers x 20k hashes from a pool of 1M (20 M holdings): lookups, and what a million holdings take."""
    rng = random.Random(3)
    pool = random_pool(POOL, rng)
    db = backend.fresh()
    keys = [nacl.signing.SigningKey(i.to_bytes(32, "big")) for i in range(1, args.large_peers + 1)]
    figures: dict[str, list[float]] = {}
    with trackers(db, backend.work) as [(port, pid)]:
        fulls, _ = announce_all(port, keys, [rng.sample(pool, args.large_hashes) for _ in keys],
                                f"{backend.name} large")
        backend.settle(db)
        single, _ = lookup_requests(pool, rng)
        asyncio.run(load([port], single, 32, 1.0))
        for _ in range(args.runs):
            latencies, _ = asyncio.run(load([port], single, 32, args.seconds))
            figures.setdefault("p99", []).append(percentile(latencies, 0.99))
            figures.setdefault("rate", []).append(len(latencies) / args.seconds)
        rss = peak_rss_mib(pid)
    holdings = args.large_peers * args.large_hashes
    return {"large full": median(fulls), "large p99": median(figures["p99"]), "large rate": median(figures["rate"]),
            "large rss": rss, "per million": backend.size(db) / (holdings / 1e6), "holdings": holdings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL database to measure beside SQLite (emptied!)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each lookup run")
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--large-peers", type=int, default=1000)
    parser.add_argument("--large-hashes", type=int, default=20_000)
    parser.add_argument("--no-large", dest="large", action="store_false", help="skip the 20 M holdings phase")
    args = parser.parse_args()

    print(f"making a pool of {POOL:,} hashes...", flush=True)
    pool = random_pool(POOL, random.Random(1))
    work = workdir("tracker")
    backends = [Backend("SQLite", work)] + ([Backend("PostgreSQL", work, args.db)] if args.db else [])
    results: dict[str, dict[str, float]] = {}
    for backend in backends:
        results[backend.name] = fleet_phase(backend, pool, args)
        if backend.url is not None:
            results[backend.name].update({f"replicas {k}": v for k, v in replicas_phase(backend, pool, args).items()})
        if args.large:
            results[backend.name].update(large_phase(backend, args))
    report(results, args)
    print(f"work directory: {work}")


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    names = list(results)
    rows: list[tuple[str, Callable[[dict], str], Callable[[dict], bool] | None]] = [
        ("full announce, 100k", lambda r: f"{r['full'] * MS:.0f} ms (max {r['full max'] * MS:.0f})",
         lambda r: r["full"] < 2),
        ("delta, 1k on 100k", lambda r: f"{r['delta'] * MS:.1f} ms", lambda r: r["delta"] < 0.05),
        ("single lookup x32, p99", lambda r: f"{r['single p99'] * MS:.2f} ms, {r['single rate']:,.0f}/s",
         lambda r: r["single p99"] < 0.005),
        (f"single, {OPEN_RATE:,}/s open, p99", lambda r: f"{r['open p99'] * MS:.2f} ms",
         lambda r: r["open p99"] < 0.005),
        ("batch 1k, p99 (1 client)", lambda r: f"{r['batch p99'] * MS:.1f} ms", lambda r: r["batch p99"] < 0.05),
        ("batch 1k, p99 (4 clients)", lambda r: f"{r['batch4 p99'] * MS:.1f} ms", lambda r: r["batch4 p99"] < 0.05),
        ("tracker CPU / single lookup", lambda r: f"{r['single server cpu'] * 1e6:.0f} µs", None),
        ("tracker CPU / batch of 1k", lambda r: f"{r['batch server cpu'] * MS:.1f} ms", None),
        ("via TrackerClient: full / delta", lambda r: f"{r['client full'] * MS:.0f} / {r['client delta'] * MS:.0f} ms",
         None),
        ("tracker peak RSS", lambda r: f"{r['rss']:.0f} MiB", None),
        ("database, 100 x 100k", lambda r: f"{r['size'] / 2**20:.0f} MiB", None),
    ]
    if args.large:
        rows += [
            (f"{args.large_peers:,} x {args.large_hashes:,}: full announce", lambda r: f"{r['large full'] * MS:.0f} ms",
             None),
            ("  single lookup x32, p99", lambda r: f"{r['large p99'] * MS:.2f} ms, {r['large rate']:,.0f}/s",
             lambda r: r["large p99"] < 0.005),
            ("  database per M holdings", lambda r: f"{r['per million'] / 2**20:.1f} MiB", None),
            ("  tracker peak RSS", lambda r: f"{r['large rss']:.0f} MiB", None),
        ]
    print(f"\n{args.peers} peers x 100,000 hashes from a pool of {POOL:,}; lookups: medians of {args.runs} runs of "
          f"{args.seconds:g} s")
    print(f"  {'':34}" + "".join(f"{name:>32}" for name in names))
    for label, text, target in rows:
        cells = "".join(f"{text(results[name]) + ('' if target is None or target(results[name]) else ' MISSED'):>32}"
                        for name in names)
        print(f"  {label:34}{cells}")
    if UNAVAILABLE:
        print(f"\n{len(UNAVAILABLE)} announces were answered 503 and sent again; the first: {UNAVAILABLE[0]}")
    if "PostgreSQL" in results:
        r = results["PostgreSQL"]
        ratio = r["replicas 2 rate"] / r["replicas 1 rate"]
        print("\nPostgreSQL replicas, single lookups x32 (closed loop), CPU per lookup:")
        for count in (1, 2):
            figure = {key[len(f"replicas {count} "):]: value for key, value in r.items()
                      if key.startswith(f"replicas {count} ")}
            print(f"  {count} replica{'s' if count > 1 else ' '}: {figure['rate']:>7,.0f}/s, "
                  f"p99 {figure['p99'] * MS:.2f} ms; replicas {figure['replica cpu'] * 1e6:.0f} µs, "
                  f"PostgreSQL {figure['database cpu'] * 1e6:.0f} µs, "
                  f"load generator {figure['client cpu'] * 1e6:.0f} µs")
        print(f"  two against one: {ratio:.2f}x {'ok' if ratio >= 1.5 else 'MISSED'} (target >= 1.5x; "
              f"{os.cpu_count()} cores for all of them); each replica's peak RSS {r['replicas rss']:.0f} MiB "
              f"{'ok' if r['replicas rss'] < 150 else 'MISSED'} (< 150 MB)")


if __name__ == "__main__":
    main()
