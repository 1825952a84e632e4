"""The tracker's PostgreSQL storage: one database that any number of tracker replicas share.

The design is SQLite's: hash parts are interned (`paths` maps the 20 bytes behind a hash part to a
small integer) and `holdings` pairs path ids with peer ids, indexed both ways (path -> peers answers
lookups, peer -> paths serves announces and removals). A full announce goes into a temporary table
by binary COPY and is applied with set operations; a delta, a heartbeat and each lookup are one
statement each. `schema_version` records every migration applied.

Several replicas write at once, so what one process's lock gave SQLite, PostgreSQL's locks give here:
- the sequence check and the change are one transaction on the peer's row (`FOR UPDATE`, rechecked
  after a wait), so two replicas cannot both accept the same `since`;
- set changes (full announces, deltas, purges, removals) take turns fleet-wide on an advisory lock,
  taken before the statements that read: interning a hash and dropping one nobody holds any more are
  then never interleaved, no holding can point at a path another replica just removed, and the
  count of paths (a row of `totals`) stays exact. Heartbeats, departures and lookups never wait for
  it. A full announce holds it while it runs (100k hashes: 1-2 s on a busy 2-core machine, bench/tracker.py);
- migrations run under another advisory lock, so replicas that start together migrate once;
- the expiry sweep runs under a third, tried rather than waited for: one replica at a time sweeps;
- writes' nonces are claimed in `claims`, so a write replayed at another replica is refused too.

Lookups name peer rows with their `version` (a sequence number every change of the row takes); each
replica keeps the peers it has seen as `Peer` objects, rendered once, and fetches a row again only
when its version moved. Online-ness is decided in the query, from the database's rows.

Connections: a few, each used by one task at a time and replaced after any failure, so a restarted
server is reconnected to on the next request; meanwhile every call fails at once with DatabaseError
(503). asyncpg, not psycopg 3, and not asyncpg's own pool: both cost more CPU per lookup
(bench/pg_drivers.py).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

from peerix import __version__

from .model import Announce, Peer, dumps
from .storage import Counts, DatabaseError, Lease, SequenceMismatch

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = (
    # 1: peers, interned hash parts, who holds what, and the count of paths.
    """
    CREATE SEQUENCE peer_versions;
    CREATE TABLE peers (
        id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key bytea NOT NULL UNIQUE,          -- ed25519 public key, 32 bytes
        name text NOT NULL,
        addresses text NOT NULL,            -- JSON, as in the API
        seq bigint NOT NULL,                -- sequence number of the set held for the peer
        paths integer NOT NULL,             -- size of that set
        first_seen double precision NOT NULL,
        last_seen double precision NOT NULL,
        departed double precision,          -- when it deregistered; NULL while present
        version bigint NOT NULL DEFAULT nextval('peer_versions')  -- moves with every change of the row
    );
    CREATE TABLE paths (
        id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        hash bytea NOT NULL UNIQUE          -- the 20 bytes behind the 32 nix32 characters
    );
    CREATE TABLE holdings (
        path integer NOT NULL,
        peer integer NOT NULL,
        PRIMARY KEY (path, peer)
    );
    CREATE INDEX holdings_by_peer ON holdings (peer, path);
    CREATE TABLE totals (paths bigint NOT NULL);  -- one row: distinct hash parts held by anyone
    INSERT INTO totals VALUES (0);
    CREATE TABLE claims (
        key bytea PRIMARY KEY,              -- a write's peer and nonce: a second one is a replay
        until double precision NOT NULL     -- after this its timestamp is stale anyway
    );
    """,
    # 2: leases: which host fetches a path from the upstream for the fleet.
    """
    CREATE TABLE leases (
        hash bytea PRIMARY KEY,             -- the 20 bytes behind the 32 nix32 characters
        holder bytea NOT NULL,              -- the holder's key
        until double precision NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    tracker text NOT NULL                   -- the peerix version that applied it
)
"""
# Advisory locks are one namespace for the whole database: this tracker's live under one class id.
LOCK_CLASS = 0x70657278  # "perx"
MIGRATE_LOCK, SET_CHANGE_LOCK, SWEEP_LOCK = 1, 2, 3
# Set changes are planned for the sizes at hand (a cached generic plan made for an empty temporary table
# once chose a nested loop over 100k x 100k rows), and joining a whole set with `paths` hashes it, which
# spills to disk within the default 4 MB.
_TAKE_TURN = (f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, {SET_CHANGE_LOCK}); "
              "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '128MB'")

_PEER = "id, key, name, addresses, seq, paths, first_seen, last_seen, departed, version"
_P_PEER = ", ".join(f"p.{column}" for column in _PEER.split(", "))

_HOLDERS = """
SELECT p.id, p.version FROM paths x JOIN holdings h ON h.path = x.id JOIN peers p ON p.id = h.peer
WHERE x.hash = $1 AND p.departed IS NULL AND p.last_seen >= $2
ORDER BY p.last_seen DESC LIMIT $3
"""
# A row an online peer, with the (1-based) positions of the asked hashes it holds.
_HOLDERS_MANY = """
SELECT p.id, p.version, array_agg(a.i) FROM unnest($1::bytea[]) WITH ORDINALITY AS a(hash, i)
JOIN paths x ON x.hash = a.hash JOIN holdings h ON h.path = x.id JOIN peers p ON p.id = h.peer
WHERE p.departed IS NULL AND p.last_seen >= $2 GROUP BY p.id
"""
_COUNTS = """
SELECT count(*) FILTER (WHERE departed IS NULL AND last_seen >= $1), count(*), coalesce(sum(paths), 0),
       (SELECT paths FROM totals)
FROM peers
"""


def _releasing(gone: str, peer: str, interned: str = "0") -> str:
    """CTEs that drop the holdings `gone` selects (a DELETE ... RETURNING h.path) and the paths nobody else
    holds, and count `interned` (paths the statement added) and the dropped in `totals`. One statement sees
    one snapshot: its own deletions from holdings are invisible to it, so "nobody else" is a holder other
    than `peer`; and it may change the row of `totals` only once."""
    return f"""
gone AS ({gone}),
orphans AS (
    DELETE FROM paths x USING gone g
    WHERE x.id = g.path AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.path = x.id AND h.peer <> {peer})
    RETURNING x.id
),
total AS (UPDATE totals SET paths = paths + {interned} - (SELECT count(*) FROM orphans))"""


# A full announce: the set is COPYed into `staged`; one join finds the known hash parts and interns the
# others (not ON CONFLICT, which would spend a path id on every hash already known) into `wanted`, and
# set operations against `wanted` change the peer's holdings. Temporary tables write no WAL; they are
# made on a connection's first full announce (lookups never pay for the catalog writes).
_TEMPORARY = """
CREATE TEMP TABLE IF NOT EXISTS staged (hash bytea NOT NULL) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS wanted (path integer PRIMARY KEY) ON COMMIT DELETE ROWS;
"""
_WANT_STAGED = """
WITH known AS MATERIALIZED (SELECT s.hash, x.id FROM staged s LEFT JOIN paths x ON x.hash = s.hash),
interned AS (INSERT INTO paths (hash) SELECT hash FROM known WHERE id IS NULL ORDER BY hash RETURNING id),
total AS (UPDATE totals SET paths = paths + (SELECT count(*) FROM interned))
INSERT INTO wanted SELECT id FROM known WHERE id IS NOT NULL UNION ALL SELECT id FROM interned
"""
_RELEASE_UNWANTED = "WITH " + _releasing("""
    DELETE FROM holdings h WHERE h.peer = $1 AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.path = h.path)
    RETURNING h.path""", "$1") + "\nSELECT count(*) FROM gone"
_HOLD_WANTED = """
INSERT INTO holdings (path, peer) SELECT w.path, $1 FROM wanted w
WHERE NOT EXISTS (SELECT 1 FROM holdings h WHERE h.peer = $1 AND h.path = w.path)
ORDER BY w.path
"""
_AFTER_FULL = f"""
UPDATE peers SET name = $2, addresses = $3, seq = greatest(seq + 1, $4), paths = paths + $5, last_seen = $6,
    departed = NULL, version = nextval('peer_versions')
WHERE id = $1 RETURNING {_PEER}
"""

# A delta: $1 key, $2 since, $3 added, $4 removed, $5 name, $6 addresses, $7 now. Applied only if `since`
# is the sequence held: FOR UPDATE waits for a concurrent change of the row and then checks again.
_DELTA = f"""
WITH peer AS (SELECT id FROM peers WHERE key = $1 AND seq = $2 FOR UPDATE),
interned AS (
    INSERT INTO paths (hash) SELECT DISTINCT a.hash FROM unnest($3::bytea[]) AS a(hash), peer
    WHERE NOT EXISTS (SELECT 1 FROM paths x WHERE x.hash = a.hash)
    RETURNING id
),
{_releasing('''
    DELETE FROM holdings h USING peer
    WHERE h.path = ANY(ARRAY(SELECT id FROM paths WHERE hash = ANY($4::bytea[]))) AND h.peer = peer.id
    RETURNING h.path''', "(SELECT id FROM peer)", "(SELECT count(*) FROM interned)")},
held AS (
    INSERT INTO holdings (path, peer)
    SELECT w.id, peer.id FROM peer, (SELECT id FROM paths WHERE hash = ANY($3::bytea[]) UNION ALL
                                     SELECT id FROM interned) AS w
    WHERE NOT EXISTS (SELECT 1 FROM holdings h WHERE h.path = w.id AND h.peer = peer.id)
    RETURNING 1
)
UPDATE peers p SET name = $5, addresses = $6, seq = p.seq + 1, last_seen = $7, departed = NULL,
    paths = p.paths + (SELECT count(*) FROM held) - (SELECT count(*) FROM gone), version = nextval('peer_versions')
FROM peer WHERE p.id = peer.id
RETURNING {_P_PEER}, (SELECT count(*) FROM held), (SELECT count(*) FROM gone)
"""
_HEARTBEAT = f"""
UPDATE peers SET name = $3, addresses = $4, last_seen = $5, departed = NULL, version = nextval('peer_versions')
WHERE key = $1 AND seq = $2 RETURNING {_PEER}
"""
_DEPART = f"UPDATE peers SET departed = $2, version = nextval('peer_versions') WHERE key = $1 RETURNING {_PEER}"
_PURGE = f"""
WITH peer AS (SELECT id FROM peers WHERE key = $1 FOR UPDATE),
{_releasing("DELETE FROM holdings h USING peer WHERE h.peer = peer.id RETURNING h.path", "(SELECT id FROM peer)")}
UPDATE peers p SET paths = 0, seq = 0, version = nextval('peer_versions') FROM peer WHERE p.id = peer.id
RETURNING {_P_PEER}, (SELECT count(*) FROM gone)
"""
# $2: remove only a peer not heard from since then (the sweep), or +infinity.
_REMOVE = f"""
WITH peer AS (DELETE FROM peers WHERE key = $1 AND last_seen < $2 RETURNING {_PEER}),
{_releasing("DELETE FROM holdings h USING peer WHERE h.peer = peer.id RETURNING h.path", "(SELECT id FROM peer)")}
SELECT {_PEER} FROM peer
"""

# $1 hash, $2 key, $3 until, $4 now: granted or renewed unless someone else holds a lease running past now.
_LEASE = f"""
WITH taken AS (
    INSERT INTO leases AS l (hash, holder, until) VALUES ($1, $2, $3)
    ON CONFLICT (hash) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
    WHERE l.until < $4 OR l.holder = EXCLUDED.holder
    RETURNING holder, until
), held AS (
    SELECT holder, until FROM taken
    UNION ALL SELECT holder, until FROM leases WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM taken)
)
SELECT held.holder, held.until, {_P_PEER} FROM held LEFT JOIN peers p ON p.key = held.holder
"""

_CONNECTIONS = 6
_CONNECT_TIMEOUT = 3.0
_READ_TIMEOUT = 5.0
_WRITE_TIMEOUT = 60.0  # a large full announce on a busy server
# Errors that leave the connection as it was: the server refused a statement, or this module said no.
_CLEAN = (asyncpg.PostgresError, SequenceMismatch)
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresStorage:
    def __init__(self, url: str, password: str | None = None) -> None:
        self.url = url
        self.password = password
        self.name = url  # a URL here never holds a password (config refuses one)
        self._idle: asyncio.Queue[asyncpg.Connection | None] = asyncio.Queue()
        self._connections: set[asyncpg.Connection] = set()
        self._set_changes = asyncio.Lock()  # one set change of this replica at a time waits for the fleet's turn
        self._peers: dict[int, Peer] = {}  # peers seen, by row; `_versions` says how fresh each is
        self._versions: dict[int, int] = {}
        self._closed = True

    async def open(self) -> None:
        """Migrate, then connect every connection now: a replica's first requests pay for none."""
        db = await self._connect()
        self._connections.add(db)
        try:
            await self._migrate(db)
            others = await asyncio.gather(*(self._connect() for _ in range(_CONNECTIONS - 1)), return_exceptions=True)
            self._connections.update(other for other in others if isinstance(other, asyncpg.Connection))
            if failed := next((other for other in others if isinstance(other, BaseException)), None):
                raise failed
        except BaseException as error:
            await self.close()
            if isinstance(error, _FAILURES):
                raise DatabaseError(f"{self.name}: {error}; is it a peerix tracker database?") from None
            raise
        self._closed = False
        for connection in self._connections:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        self._closed = True
        connections, self._connections = self._connections, set()
        await asyncio.gather(*(db.close(timeout=2) for db in connections), return_exceptions=True)
        for db in connections:
            db.terminate()

    async def _connect(self) -> asyncpg.Connection:
        host = urlsplit(self.url).hostname or "the default socket"
        try:
            db = await asyncpg.connect(self.url, password=self.password, timeout=_CONNECT_TIMEOUT,
                                       server_settings={"application_name": "peerix-tracker", "jit": "off"})
        except (*_FAILURES, ValueError) as error:
            raise DatabaseError(f"cannot connect to {self.name} ({host}): {type(error).__name__}: {error}") from None
        return db

    async def _migrate(self, db: asyncpg.Connection) -> None:
        await db.execute(f"SELECT pg_advisory_lock({LOCK_CLASS}, {MIGRATE_LOCK})")
        try:
            await db.execute(_SCHEMA_TABLE)
            version = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > SCHEMA_VERSION:
                raise DatabaseError(f"{self.name} has schema version {version}, newer than this tracker's "
                                    f"{SCHEMA_VERSION}: run a newer peerix-tracker")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                async with db.transaction():
                    await db.execute(script)
                    await db.execute("INSERT INTO schema_version (version, tracker) VALUES ($1, $2)", number,
                                     __version__)
                log.info("database migrated db=%s version=%d", self.name, number)
        finally:
            if not db.is_closed():
                await db.execute(f"SELECT pg_advisory_unlock({LOCK_CLASS}, {MIGRATE_LOCK})")

    @asynccontextmanager
    async def _connection(self, seconds: float) -> AsyncIterator[asyncpg.Connection]:
        """An idle connection (a new one if the last failed) for work that must end within `seconds`; any
        failure, a timeout included, is a DatabaseError."""
        if self._closed:
            raise DatabaseError("the database is closed")
        try:
            async with asyncio.timeout(seconds):
                db = await self._idle.get()
                try:
                    if db is None or db.is_closed():
                        db = await self._connect()
                        self._connections.add(db)
                    yield db
                except BaseException as error:
                    if db is not None and not isinstance(error, _CLEAN):  # it may be mid-statement: start afresh
                        self._connections.discard(db)
                        db.terminate()
                        db = None
                    if isinstance(error, _FAILURES):
                        raise DatabaseError(f"{self.name}: {type(error).__name__}: {error}") from None
                    raise
                finally:
                    self._idle.put_nowait(db)
        except TimeoutError:
            raise DatabaseError(f"{self.name}: no answer within {seconds:g} s") from None

    async def _read(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._connection(_READ_TIMEOUT) as db:
            return await work(db)

    async def _write(self, work: Callable[[asyncpg.Connection], Awaitable[T]], set_change: bool = False) -> T:
        """`work` in one transaction; a set change first takes the fleet's turn (see the module's notes)."""
        async with self._connection(_WRITE_TIMEOUT) as db, db.transaction():
            if set_change:
                await db.execute(_TAKE_TURN)
            return await work(db)

    async def _set_change(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._set_changes:
            return await self._write(work, set_change=True)

    # Peers as this replica knows them

    def _peer(self, row: asyncpg.Record) -> Peer:
        """The peer of a full row, kept for lookups that name it at this version."""
        peer = Peer.from_row(row[:9])
        self._peers[peer.row], self._versions[peer.row] = peer, row[9]
        return peer

    async def _named(self, db: asyncpg.Connection, rows: Iterable[tuple[int, int]]) -> dict[int, Peer]:
        """The peers of (row, version) pairs, fetching those that changed since they were last seen."""
        rows = list(rows)
        stale = [id_ for id_, version in rows if self._versions.get(id_) != version]
        if stale:
            for row in await db.fetch(f"SELECT {_PEER} FROM peers WHERE id = ANY($1::integer[])", stale):
                self._peer(row)
        return {id_: peer for id_, _ in rows if (peer := self._peers.get(id_)) is not None}

    # Reads

    async def peers(self) -> list[Peer]:
        rows = await self._read(lambda db: db.fetch(f"SELECT {_PEER} FROM peers"))
        self._peers, self._versions = {}, {}  # forgets the removed
        return [self._peer(row) for row in rows]

    async def peer(self, key: bytes) -> Peer | None:
        row = await self._read(lambda db: db.fetchrow(f"SELECT {_PEER} FROM peers WHERE key = $1", key))
        return self._peer(row) if row is not None else None

    async def holders(self, packed: bytes, online_since: float, limit: int) -> list[Peer]:
        async def work(db: asyncpg.Connection) -> list[Peer]:
            rows = await db.fetch(_HOLDERS, packed, online_since, limit)
            named = await self._named(db, rows)
            return [named[row[0]] for row in rows if row[0] in named]

        return await self._read(work)

    async def holders_many(self, packed: list[bytes], online_since: float, limit: int) -> dict[bytes, list[Peer]]:
        async def work(db: asyncpg.Connection) -> dict[bytes, list[Peer]]:
            rows = await db.fetch(_HOLDERS_MANY, packed, online_since)
            named = await self._named(db, ((row[0], row[1]) for row in rows))
            found: dict[bytes, list[Peer]] = {}
            for id_, _, positions in rows:
                if (peer := named.get(id_)) is not None:
                    for position in positions:
                        found.setdefault(packed[position - 1], []).append(peer)
            for peers in found.values():
                peers.sort(key=lambda peer: peer.last_seen, reverse=True)
                del peers[limit:]
            return found

        return await self._read(work)

    async def counts(self, online_since: float) -> Counts:
        online, peers, holdings, paths = await self._read(lambda db: db.fetchrow(_COUNTS, online_since))
        return Counts(online, peers - online, paths, holdings)

    async def check(self) -> int:
        return await self._read(lambda db: db.fetchval("SELECT max(version) FROM schema_version"))

    async def size(self) -> int:
        return await self._read(lambda db: db.fetchval("SELECT pg_database_size(current_database())"))

    # Writes

    async def announce(self, key: bytes, announce: Announce, now: float) -> tuple[Peer, int, int]:
        name, addresses = announce.name, dumps(announce.addresses.to_json())

        async def held(db: asyncpg.Connection) -> int | None:
            return await db.fetchval("SELECT seq FROM peers WHERE key = $1", key)

        async def heartbeat(db: asyncpg.Connection) -> tuple[Peer, int, int]:
            row = await db.fetchrow(_HEARTBEAT, key, announce.since, name, addresses, now)
            if row is None:
                raise SequenceMismatch(await held(db))
            return self._peer(row), 0, 0

        async def delta(db: asyncpg.Connection) -> tuple[Peer, int, int]:
            row = await db.fetchrow(_DELTA, key, announce.since, announce.added, announce.removed, name, addresses,
                                    now)
            if row is None:
                raise SequenceMismatch(await held(db))
            return self._peer(row), row[10], row[11]

        async def full(db: asyncpg.Connection) -> tuple[Peer, int, int]:
            assert announce.hashes is not None
            row = await db.fetchrow("SELECT id, seq FROM peers WHERE key = $1 FOR UPDATE", key)
            if row is None:
                row = await db.fetchrow("INSERT INTO peers (key, name, addresses, seq, paths, first_seen, last_seen) "
                                        "VALUES ($1, '', '{}', 0, 0, $2, $2) RETURNING id, seq", key, now)
            id_, seq = row
            await db.execute(_TEMPORARY)
            await db.copy_to_table("staged", source=memoryview(_copy_data(dict.fromkeys(announce.hashes))),
                                   format="binary")
            await db.execute(_WANT_STAGED)
            removed = await db.fetchval(_RELEASE_UNWANTED, id_)
            added = _count(await db.execute(_HOLD_WANTED, id_))
            # A number at least the time in milliseconds: a wiped database cannot have issued it.
            row = await db.fetchrow(_AFTER_FULL, id_, name, addresses, int(now * 1000), added - removed, now)
            return self._peer(row), added, removed

        if announce.kind == "heartbeat":
            return await self._write(heartbeat)
        return await self._set_change(full if announce.kind == "full" else delta)

    async def depart(self, key: bytes, now: float) -> Peer | None:
        row = await self._write(lambda db: db.fetchrow(_DEPART, key, now))
        return row and self._peer(row)

    async def purge(self, key: bytes) -> tuple[Peer, int] | None:
        row = await self._set_change(lambda db: db.fetchrow(_PURGE, key))
        return row and (self._peer(row), row[10])

    async def remove(self, key: bytes, silent_since: float = float("inf")) -> Peer | None:
        row = await self._set_change(lambda db: db.fetchrow(_REMOVE, key, silent_since))
        if row is None:
            return None
        peer = self._peer(row)
        del self._peers[peer.row], self._versions[peer.row]
        return peer

    async def claim(self, key: bytes, until: float) -> bool:
        claimed = await self._write(lambda db: db.fetchval(
            "INSERT INTO claims (key, until) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true", key, until))
        return claimed is not None

    async def lease(self, packed: bytes, key: bytes, until: float, now: float) -> Lease:
        row = await self._write(lambda db: db.fetchrow(_LEASE, packed, key, until, now))
        return Lease(bytes(row[0]), row[1], self._peer(row[2:]) if row[2] is not None else None)

    async def release(self, packed: bytes, key: bytes) -> bool:
        status = await self._write(lambda db: db.execute("DELETE FROM leases WHERE hash = $1 AND holder = $2",
                                                         packed, key))
        return _count(status) == 1

    async def expire(self, silent_since: float) -> list[Peer] | None:
        async with self._connection(_WRITE_TIMEOUT) as db:
            if not await db.fetchval(f"SELECT pg_try_advisory_lock({LOCK_CLASS}, {SWEEP_LOCK})"):
                return None
            try:
                await db.execute("DELETE FROM claims WHERE until < $1", time.time())
                await db.execute("DELETE FROM leases WHERE until < $1", time.time())
                keys = [row[0] for row in await db.fetch("SELECT key FROM peers WHERE last_seen < $1", silent_since)]
                return [peer for key in keys if (peer := await self.remove(bytes(key), silent_since)) is not None]
            finally:
                await db.execute(f"SELECT pg_advisory_unlock({LOCK_CLASS}, {SWEEP_LOCK})")


def _copy_data(hashes: Iterable[bytes]) -> bytes:
    """Binary COPY of one bytea column: the signature, flags and header extension, then each row as its
    field count (1), the field's length (20) and its bytes, then the trailer."""
    return b"PGCOPY\n\xff\r\n\0" + bytes(8) + b"".join(b"\0\1\0\0\0\x14" + h for h in hashes) + b"\xff\xff"


def _count(status: str) -> int:
    """The row count of a command's status, e.g. 'INSERT 0 42'."""
    return int(status.rsplit(" ", 1)[1])
