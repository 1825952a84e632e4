"""The tracker's SQLite storage, the default: schema, migrations and every query.

Hash parts are interned: `paths` maps the 20 bytes behind a hash part to a small integer, and
`holdings` pairs path ids with peer ids, indexed both ways (path -> peers answers lookups, peer ->
paths serves announces and removals). With 100 peers x 100k hashes from a pool of 1M, interning
halves the file (270 against 580 MB) and the pages an announce dirties, against keeping the 20
bytes in both indexes. A set reaches SQLite as one blob that a recursive CTE splits into a
temporary table: 100k hashes cost a handful of statements rather than 100k bound executions, and
a full announce half the time (0.6 against 1.1 s).

Every change is one transaction on the writer connection, so a crash leaves the previous state
whole. Other work has connections of its own, which WAL lets run beside a write:
- batch lookups: two readers through aiosqlite, since SQLite releases the GIL and two cores can
  then answer two batches at once;
- single lookups: a plain connection used on the event loop, because they are index probes of
  ~20 µs and the hop to a worker thread costs more than the query (5.1k against 3.5k lookups/s);
- checkpoints, which copy the write-ahead log into the database (and fsync it): at most once a
  second after a commit, passive, so no write waits for them. Under a stream of large announces a
  passive checkpoint never finds the log fully copied and the log never restarts (it reached 6 GB
  while 100 peers announced 100k hashes each), so past _WAL_LIMIT a TRUNCATE checkpoint follows:
  it holds writes off only while it copies what the passive one left.

One tracker process owns the file (`<db>.lock`), so the peers table, small (a row a machine) and read by
every lookup, is mirrored in memory as `Peer` objects whose JSON is rendered once per change; a lookup
is an index probe that names rows, and the mirror turns them into peers.
"""

import asyncio
import fcntl
import logging
import operator
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from .model import Announce, Peer, dumps
from .storage import Counts, DatabaseError, Lease, SequenceMismatch

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = (
    # 1: peers, interned hash parts, and who holds what.
    """
    CREATE TABLE peers (
        id INTEGER PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,      -- ed25519 public key, 32 bytes
        name TEXT NOT NULL,
        addresses TEXT NOT NULL,       -- JSON, as in the API
        seq INTEGER NOT NULL,          -- sequence number of the set held for the peer
        paths INTEGER NOT NULL,        -- size of that set
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE paths (
        id INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE      -- the 20 bytes behind the 32 nix32 characters
    );
    CREATE TABLE holdings (
        path INTEGER NOT NULL,
        peer INTEGER NOT NULL,
        PRIMARY KEY (path, peer)
    ) WITHOUT ROWID;
    CREATE INDEX holdings_by_peer ON holdings (peer, path);
    """,
    # 2: a peer that said goodbye keeps its set (so it comes back with a delta) but is offline.
    """
    ALTER TABLE peers ADD COLUMN departed REAL;   -- when it deregistered; NULL while present
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS staged (hash BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS wanted (path INTEGER PRIMARY KEY);
CREATE TEMP TABLE IF NOT EXISTS gone (path INTEGER PRIMARY KEY);
"""
# ?1 is the packed hashes, 20 bytes each, back to back.
_SPLIT = ("WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 20 FROM i WHERE n + 20 < length(?1)) "
          "SELECT substr(?1, n + 1, 20) FROM i")
_HOLDERS = "SELECT h.peer FROM paths p JOIN holdings h ON h.path = p.id WHERE p.hash = ?"
# A row a hash, its holders as text ("3,17,42"): a tenth of the Python objects of a row a holder,
# and a batch of 1,000 hashes then costs 12 ms rather than 22.
_HOLDERS_MANY = (f"WITH asked(hash) AS ({_SPLIT}) SELECT p.hash, "
                 "(SELECT group_concat(h.peer) FROM holdings h WHERE h.path = p.id) "
                 "FROM asked a CROSS JOIN paths p ON p.hash = a.hash")
_PEER = "id, key, name, addresses, seq, paths, first_seen, last_seen, departed"

_WRITER_CACHE_KIB = 32768
_READER_CACHE_KIB = 32768
_PROBE_CACHE_KIB = 32768
_READERS = 2
_CHECKPOINT_INTERVAL = 1.0
_WAL_LIMIT = 256 << 20
_CLAIMS_PRUNED_AT = 100_000
_LAST_SEEN = operator.attrgetter("last_seen")


class SqliteStorage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._path_count = 0  # distinct hash parts held by anyone, kept up to date by every write
        self._by_key: dict[bytes, Peer] = {}  # the peers table, mirrored
        self._by_row: dict[int, Peer] = {}
        self._claims: dict[bytes, float] = {}  # writes' keys, until when; one process, so memory is enough
        self._leases: dict[bytes, tuple[bytes, float]] = {}  # packed hash -> (holder's key, until)
        self._lock = asyncio.Lock()
        self._lock_file: int | None = None
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._idle_readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._probe: sqlite3.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoints: asyncio.Task | None = None
        self._committed = asyncio.Event()
        self._path_change = 0

    async def open(self) -> None:
        self._lock_file = _exclusive(self.path)
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure(self._writer, _WRITER_CACHE_KIB, "PRAGMA wal_autocheckpoint = 0")
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._migrate()
            await self._writer.executescript(_TEMP_TABLES)
            for _ in range(_READERS):
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                self._readers.append(reader)
                await self._configure(reader, _READER_CACHE_KIB, "PRAGMA query_only = ON")
                self._idle_readers.put_nowait(reader)
            self._probe = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # On the event loop a lock must not be waited for long: a rare SQLITE_BUSY answers 503 instead.
            for pragma in _pragmas(_PROBE_CACHE_KIB, "PRAGMA query_only = ON", "PRAGMA busy_timeout = 50"):
                self._probe.execute(pragma)
            self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure(self._checkpointer, 1024)
            self._checkpoints = asyncio.create_task(self._checkpoint_after_commits(), name="checkpoints")
            self._path_count = (await self._query("SELECT count(*) FROM paths"))[0][0]
            for row in await self._query(f"SELECT {_PEER} FROM peers"):
                self._store(Peer.from_row(row))
        except (sqlite3.DatabaseError, DatabaseError) as error:
            await self.close()
            raise DatabaseError(f"{self.path}: {error}; is it a peerix tracker database?") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
        for connection in (*self._readers, self._checkpointer, self._writer):
            if connection is not None:
                await connection.close()
        self._readers = []
        if self._probe is not None:
            self._probe.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
        self._writer = self._checkpointer = self._probe = self._lock_file = self._checkpoints = None

    async def _checkpoint_after_commits(self) -> None:
        assert self._checkpointer is not None
        while True:
            await self._committed.wait()
            self._committed.clear()
            try:
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if _size(Path(f"{self.path}-wal")) > _WAL_LIMIT:
                    await self._checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as error:  # the log keeps growing until one succeeds; reads and writes go on
                log.warning("checkpoint failed path=%s error=%s", self.path, error)
            await asyncio.sleep(_CHECKPOINT_INTERVAL)

    @staticmethod
    async def _configure(connection: aiosqlite.Connection, cache_kib: int, *extra: str) -> None:
        for pragma in _pragmas(cache_kib, *extra):
            await connection.execute(pragma)

    async def _migrate(self) -> None:
        assert self._writer is not None
        version = (await self._writer.execute_fetchall("PRAGMA user_version"))[0][0]
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"{self.path} has schema version {version}, newer than this tracker's "
                                f"{SCHEMA_VERSION}: run a newer peerix-tracker")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                await self._writer.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
            except BaseException:
                if self._writer.in_transaction:
                    await self._writer.rollback()
                raise
            log.info("database migrated path=%s version=%d", self.path, number)

    # Reads

    async def peers(self) -> list[Peer]:
        return list(self._by_key.values())

    async def peer(self, key: bytes) -> Peer | None:
        return self._by_key.get(key)

    async def holders(self, packed: bytes, online_since: float, limit: int) -> list[Peer]:
        """An index probe on the calling (event loop) thread: ~20 µs, less than the hop to a worker."""
        if self._probe is None:
            raise DatabaseError("the database is closed")
        try:
            rows = [row[0] for row in self._probe.execute(_HOLDERS, (packed,))]
        except sqlite3.Error as error:
            raise DatabaseError(f"{self.path}: {error}") from None
        return self._online(rows, online_since, limit)

    async def holders_many(self, packed: list[bytes], online_since: float, limit: int) -> dict[bytes, list[Peer]]:
        rows = await self._query(_HOLDERS_MANY, (b"".join(packed),))
        found = {hash_: self._online(map(int, peers.split(",")), online_since, limit) for hash_, peers in rows if peers}
        return {hash_: peers for hash_, peers in found.items() if peers}

    async def counts(self, online_since: float) -> Counts:
        online = sum(peer.is_online(online_since) for peer in self._by_key.values())
        return Counts(online, len(self._by_key) - online, self._path_count,
                      sum(peer.paths for peer in self._by_key.values()))

    async def check(self) -> int:
        return (await self._query("PRAGMA user_version"))[0][0]

    async def size(self) -> int:
        """Bytes on disk, write-ahead log included."""
        return _size(self.path) + _size(Path(f"{self.path}-wal"))

    async def _query(self, sql: str, parameters: tuple = ()) -> list:
        """Rows of a read on an idle reader connection."""
        if not self._readers:
            raise DatabaseError("the database is closed")
        reader = await self._idle_readers.get()
        try:
            return list(await reader.execute_fetchall(sql, parameters))
        except sqlite3.Error as error:
            raise DatabaseError(f"{self.path}: {error}") from None
        finally:
            self._idle_readers.put_nowait(reader)

    def _online(self, rows: Iterable[int], online_since: float, limit: int) -> list[Peer]:
        """The online peers among database rows, most recently seen first (a row not yet mirrored is skipped)."""
        peers = [peer for row in rows if (peer := self._by_row.get(row)) is not None and peer.is_online(online_since)]
        peers.sort(key=_LAST_SEEN, reverse=True)
        return peers[:limit]

    def _store(self, peer: Peer) -> Peer:
        if (old := self._by_key.get(peer.key)) is not None and old.row != peer.row:
            self._by_row.pop(old.row, None)
        self._by_key[peer.key] = peer
        self._by_row[peer.row] = peer
        return peer

    def _forget(self, peer: Peer) -> Peer:
        if (held := self._by_key.get(peer.key)) is not None and held.row == peer.row:
            del self._by_key[peer.key]
            self._by_row.pop(peer.row, None)
        return peer

    # Writes

    async def announce(self, key: bytes, announce: Announce, now: float) -> tuple[Peer, int, int]:
        """Apply a full or delta announce; the peer as stored, and how many hashes it gained and lost."""

        async def work(db: aiosqlite.Connection) -> tuple[Peer, int, int]:
            rows = await db.execute_fetchall("SELECT id, seq FROM peers WHERE key = ?", (key,))
            row, held = next(iter(rows), (None, None))
            if announce.hashes is None and held != announce.since:
                raise SequenceMismatch(held)
            if row is None:
                cursor = await db.execute(
                    "INSERT INTO peers (key, name, addresses, seq, paths, first_seen, last_seen) "
                    "VALUES (?, '', '{}', 0, 0, ?, ?)", (key, now, now))
                row, held = cursor.lastrowid, 0
            if announce.hashes is not None:
                await self._stage(db, announce.hashes)
                await self._intern(db)
                await db.execute("DELETE FROM gone")
                await db.execute("INSERT INTO gone SELECT path FROM holdings WHERE peer = ? AND path NOT IN wanted",
                                 (row,))
                removed, added = await self._release(db, row), await self._hold(db, row)
                seq = max(held + 1, int(now * 1000))  # a number a wiped database cannot have issued
            else:
                removed = added = 0
                if announce.removed:
                    await self._stage(db, announce.removed)
                    await db.execute("DELETE FROM gone")
                    await db.execute("INSERT INTO gone SELECT p.id FROM staged s CROSS JOIN paths p ON p.hash = s.hash")
                    removed = await self._release(db, row)
                if announce.added:
                    await self._stage(db, announce.added)
                    await self._intern(db)
                    added = await self._hold(db, row)
                seq = held + 1 if announce.added or announce.removed else held
            rows = await db.execute_fetchall(
                f"UPDATE peers SET name = ?, addresses = ?, seq = ?, paths = paths + ?, last_seen = ?, "
                f"departed = NULL WHERE id = ? RETURNING {_PEER}",
                (announce.name, dumps(announce.addresses.to_json()), seq, added - removed, now, row))
            return Peer.from_row(next(iter(rows))), added, removed

        peer, added, removed = await self._write(work)
        return self._store(peer), added, removed

    async def depart(self, key: bytes, now: float) -> Peer | None:
        """Mark a peer as gone, keeping its set and sequence for its return."""

        async def work(db: aiosqlite.Connection) -> Peer | None:
            rows = await db.execute_fetchall(f"UPDATE peers SET departed = ? WHERE key = ? RETURNING {_PEER}",
                                             (now, key))
            return Peer.from_row(next(iter(rows))) if rows else None

        peer = await self._write(work)
        return peer and self._store(peer)

    async def purge(self, key: bytes) -> tuple[Peer, int] | None:
        async def work(db: aiosqlite.Connection) -> tuple[Peer, int] | None:
            rows = await db.execute_fetchall("SELECT id FROM peers WHERE key = ?", (key,))
            if not rows:
                return None
            row = next(iter(rows))[0]
            await db.execute("DELETE FROM gone")
            await db.execute("INSERT INTO gone SELECT path FROM holdings WHERE peer = ?", (row,))
            dropped = await self._release(db, row)
            rows = await db.execute_fetchall(f"UPDATE peers SET paths = 0, seq = 0 WHERE id = ? RETURNING {_PEER}",
                                             (row,))
            return Peer.from_row(next(iter(rows))), dropped

        purged = await self._write(work)
        return purged and (self._store(purged[0]), purged[1])

    async def remove(self, key: bytes, silent_since: float | None = None) -> Peer | None:
        """Remove a peer and its hashes (only if not heard from since `silent_since`, when given)."""

        async def work(db: aiosqlite.Connection) -> Peer | None:
            rows = await db.execute_fetchall(
                f"DELETE FROM peers WHERE key = ? AND last_seen < ? RETURNING {_PEER}",
                (key, float("inf") if silent_since is None else silent_since))
            if not rows:
                return None
            peer = Peer.from_row(next(iter(rows)))
            await db.execute("DELETE FROM gone")
            await db.execute("INSERT INTO gone SELECT path FROM holdings WHERE peer = ?", (peer.row,))
            await self._release(db, peer.row)
            return peer

        peer = await self._write(work)
        return peer and self._forget(peer)

    async def claim(self, key: bytes, until: float) -> bool:
        if key in self._claims:
            return False
        if len(self._claims) >= _CLAIMS_PRUNED_AT:
            self._prune_claims(time.time())
        self._claims[key] = until
        return True

    def _prune_claims(self, now: float) -> None:
        for key in [key for key, until in self._claims.items() if until < now]:
            del self._claims[key]

    async def lease(self, packed: bytes, key: bytes, until: float, now: float) -> Lease:
        """In memory, like the claims: one process holds the file, and a restart costs a lease no more
        than its time to live."""
        held = self._leases.get(packed)
        if held is None or held[1] < now or held[0] == key:
            held = self._leases[packed] = (key, until)
        return Lease(held[0], held[1], self._by_key.get(held[0]))

    async def release(self, packed: bytes, key: bytes) -> bool:
        if self._leases.get(packed, (None, 0.0))[0] != key:
            return False
        del self._leases[packed]
        return True

    async def expire(self, silent_since: float) -> list[Peer]:
        now = time.time()
        self._prune_claims(now)
        for packed in [packed for packed, (_, until) in self._leases.items() if until < now]:
            del self._leases[packed]
        removed = []
        for stale in [peer for peer in self._by_key.values() if peer.last_seen < silent_since]:
            if (peer := await self.remove(stale.key, silent_since)) is not None:
                removed.append(peer)
        return removed

    async def _write(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `work` as one transaction; on any failure, cancellation included, nothing of it stays."""
        async with self._lock:
            db = self._writer
            if db is None:
                raise DatabaseError("the database is closed")
            if db.in_transaction:  # a rollback that was itself cancelled
                await db.rollback()
            self._path_change = 0
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await work(db)
                    await db.execute("COMMIT")
                except BaseException:
                    await db.rollback()
                    raise
            except sqlite3.Error as error:
                raise DatabaseError(f"{self.path}: {error}") from None
            self._path_count += self._path_change
            self._committed.set()
            return result

    @staticmethod
    async def _stage(db: aiosqlite.Connection, packed: list[bytes]) -> None:
        await db.execute("DELETE FROM staged")
        if packed:
            await db.execute(f"INSERT OR IGNORE INTO staged {_SPLIT}", (b"".join(packed),))

    async def _intern(self, db: aiosqlite.Connection) -> None:
        """Give every staged hash a path id; `wanted` then holds those ids."""
        cursor = await db.execute("INSERT OR IGNORE INTO paths (hash) SELECT hash FROM staged")
        self._path_change += cursor.rowcount
        await db.execute("DELETE FROM wanted")
        await db.execute("INSERT INTO wanted SELECT p.id FROM staged s CROSS JOIN paths p ON p.hash = s.hash")

    @staticmethod
    async def _hold(db: aiosqlite.Connection, row: int) -> int:
        cursor = await db.execute("INSERT OR IGNORE INTO holdings (path, peer) SELECT path, ? FROM wanted", (row,))
        return cursor.rowcount

    async def _release(self, db: aiosqlite.Connection, row: int) -> int:
        """Drop the peer's holdings listed in `gone`, and the paths nobody holds any more."""
        cursor = await db.execute("DELETE FROM holdings WHERE peer = ? AND path IN gone", (row,))
        released = cursor.rowcount
        cursor = await db.execute(
            "DELETE FROM paths WHERE id IN gone AND NOT EXISTS (SELECT 1 FROM holdings WHERE path = paths.id)")
        self._path_change -= cursor.rowcount
        return released


def _pragmas(cache_kib: int, *extra: str) -> list[str]:
    return [
        "PRAGMA synchronous = NORMAL",  # with WAL: consistent after a crash; the last commits may be lost
        "PRAGMA busy_timeout = 5000",
        f"PRAGMA cache_size = -{cache_kib}",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA journal_size_limit = 67108864",
        *extra,
    ]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _exclusive(path: Path) -> int:
    """Hold `<db>.lock` while open: a second tracker on the same file would disagree with this one.
    A missing directory is made (0700: the database names every peer)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise DatabaseError(f"cannot open {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseError(f"{path} is in use by another peerix-tracker") from None
    return fd
