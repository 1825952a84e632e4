"""Benchmark: asyncpg against psycopg 3 on the tracker's own PostgreSQL statements, in one run.

Why the tracker uses asyncpg. Both drivers run the statements of tracker/postgres.py on the same
database (emptied, then loaded with 20 peers x 50,000 hashes through the tracker's storage):
  single   the single lookup, 8 tasks over 4 connections back to back: lookups/s and the client's CPU each
  batch    the batch lookup of 1,000 hashes on one connection: latency
  copy     a binary COPY of 100,000 hashes into the temporary table of a full announce: latency
Rounds alternate which driver goes first; each figure is the median of --rounds. psycopg is not one of
peerix's dependencies: `pip install 'psycopg[binary]'` into the virtual environment to run this.
Usage: bench/pg_drivers.py --db postgresql://... (a database it may empty; `python tests/postgres.py` makes one)
"""

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.nix import nix32  # noqa: E402
from tracker import postgres  # noqa: E402
from tracker.model import Addresses, Announce  # noqa: E402

from harness import median  # noqa: E402

CONNECTIONS, TASKS = 4, 8


async def load(url: str) -> list[bytes]:
    """Empty the database and load it through the tracker's storage; the pool of packed hashes."""
    db = await asyncpg.connect(url)
    await db.execute("DROP TABLE IF EXISTS holdings, paths, peers, totals, claims, schema_version; "
                     "DROP SEQUENCE IF EXISTS peer_versions")
    await db.close()
    rng = random.Random(1)
    pool = [nix32.decode("".join(rng.choices(nix32.ALPHABET, k=32))) for _ in range(200_000)]
    storage = postgres.PostgresStorage(url)
    await storage.open()
    for number in range(20):
        await storage.announce(os.urandom(32), Announce(f"peer-{number}", Addresses("x"),
                                                        hashes=rng.sample(pool, 50_000)), time.time())
    await storage.close()
    db = await asyncpg.connect(url)
    await db.execute("VACUUM ANALYZE")
    await db.close()
    return pool


def percent_s(sql: str) -> str:
    """psycopg's placeholders for asyncpg's $1, $2, ..."""
    for number in range(9, 0, -1):
        sql = sql.replace(f"${number}", "%s")
    return sql


async def closed_loop(connections: list, query: Callable[[object, bytes], Awaitable], pool: list[bytes],
                      seconds: float) -> tuple[float, float]:
    """Lookups/s and client CPU per lookup: TASKS tasks back to back over the connections (a queue, as
    the tracker's own)."""
    idle: asyncio.Queue = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)
    done = 0

    async def task(rng: random.Random) -> None:
        nonlocal done
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            connection = await idle.get()
            try:
                await query(connection, rng.choice(pool))
            finally:
                idle.put_nowait(connection)
            done += 1

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task(random.Random(i)) for i in range(TASKS)))
    return done / (time.perf_counter() - started), (time.process_time() - cpu) / done


async def timed(call: Callable[[], Awaitable], times: int) -> float:
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return median(durations)


async def with_asyncpg(url: str, pool: list[bytes], seconds: float) -> dict[str, float]:
    connections = [await asyncpg.connect(url) for _ in range(CONNECTIONS)]
    rate, cpu = await closed_loop(connections, lambda db, h: db.fetch(postgres._HOLDERS, h, 0.0, 50), pool, seconds)
    db = connections[0]
    batch = await timed(lambda: db.fetch(postgres._HOLDERS_MANY, random.sample(pool, 1000), 0.0), 20)
    await db.execute(postgres._TEMPORARY)
    data = postgres._copy_data(random.sample(pool, 100_000))

    async def copy() -> None:
        async with db.transaction():
            await db.copy_to_table("staged", source=memoryview(data), format="binary")

    result = {"rate": rate, "cpu": cpu, "batch": batch, "copy": await timed(copy, 5)}
    for connection in connections:
        await connection.close()
    return result


async def with_psycopg(url: str, pool: list[bytes], seconds: float) -> dict[str, float]:
    import psycopg

    connections = [await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0)
                   for _ in range(CONNECTIONS)]
    single, many = percent_s(postgres._HOLDERS), percent_s(postgres._HOLDERS_MANY)

    async def lookup(db: psycopg.AsyncConnection, hash_: bytes) -> list:
        return await (await db.execute(single, (hash_, 0.0, 50))).fetchall()

    rate, cpu = await closed_loop(connections, lookup, pool, seconds)
    db = connections[0]

    async def batch() -> list:
        return await (await db.execute(many, (random.sample(pool, 1000), 0.0))).fetchall()

    await db.execute(postgres._TEMPORARY, prepare=False)  # two statements: not one prepared statement
    data = postgres._copy_data(random.sample(pool, 100_000))

    async def copy() -> None:
        async with db.transaction(), db.cursor().copy("COPY staged FROM STDIN (FORMAT BINARY)") as into:
            await into.write(data)

    result = {"rate": rate, "cpu": cpu, "batch": await timed(batch, 20), "copy": await timed(copy, 5)}
    for connection in connections:
        await connection.close()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, metavar="URL", help="a PostgreSQL database it may empty")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        sys.exit("psycopg is not installed: .venv/bin/pip install 'psycopg[binary]'")
    print("loading 20 peers x 50,000 hashes...", flush=True)
    pool = await load(args.db)
    drivers = {"asyncpg": with_asyncpg, "psycopg 3": with_psycopg}
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in drivers}
    for number in range(args.rounds):
        for name in list(drivers)[:: 1 if number % 2 == 0 else -1]:
            for key, value in (await drivers[name](args.db, pool, args.seconds)).items():
                figures[name].setdefault(key, []).append(value)
        print(f"round {number + 1}/{args.rounds} done", flush=True)
    result = {name: {key: median(values) for key, values in by.items()} for name, by in figures.items()}
    a, p = result["asyncpg"], result["psycopg 3"]
    print(f"\nmedians of {args.rounds} rounds            asyncpg     psycopg 3   asyncpg / psycopg")
    print(f"  single lookups/s ({TASKS} tasks)      {a['rate']:>9,.0f}   {p['rate']:>11,.0f}   "
          f"{a['rate'] / p['rate']:.2f}x")
    print(f"  client CPU / lookup           {a['cpu'] * 1e6:>9.0f} µs {p['cpu'] * 1e6:>9.0f} µs   "
          f"{a['cpu'] / p['cpu']:.2f}x")
    print(f"  batch of 1,000                {a['batch'] * 1e3:>9.1f} ms {p['batch'] * 1e3:>9.1f} ms   "
          f"{a['batch'] / p['batch']:.2f}x")
    print(f"  COPY of 100,000               {a['copy'] * 1e3:>9.1f} ms {p['copy'] * 1e3:>9.1f} ms   "
          f"{a['copy'] / p['copy']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
