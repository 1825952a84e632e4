"""The host's own Nix store: path info from its SQLite database, NARs from its files.

The store may live under any root (`/` in production, `/tmp/hostA` for a chroot store in tests);
paths keep their logical store directory, `/nix/store`, whatever the root.
"""

import bz2
import logging
import os
import sqlite3
from collections.abc import Awaitable, Iterable
from pathlib import Path

import aiosqlite

from ..nix.hash import parse_sha256
from ..nix.narinfo import PathInfo
from ..nix.realisation import Realisation
from ..nix.storepath import STORE_DIR, StorePath

log = logging.getLogger(__name__)

MAX_LOG = 16 << 20  # bytes of a build log served: the end of a longer one, where its errors are

# One round trip per lookup: the row and its references. The range on `path` uses the unique
# index, so a hash-part lookup costs a B-tree probe whatever the store's size.
_QUERY_BY_HASH = """
SELECT v.path, v.hash, v.registrationTime, v.deriver, v.narSize, v.sigs, v.ca,
       (SELECT group_concat(r.path, ' ') FROM Refs JOIN ValidPaths r ON r.id = Refs.reference
        WHERE Refs.referrer = v.id)
FROM ValidPaths v WHERE v.path > ? AND v.path < ? LIMIT 1
"""


_REALISATION = """
SELECT r.id, v.path, r.signatures FROM Realisations r JOIN ValidPaths v ON v.id = r.outputPath
WHERE r.drvPath = ? AND r.outputName = ?
"""
_ALL_REALISATIONS = """
SELECT r.drvPath || '!' || r.outputName, substr(v.path, ?), v.sigs
FROM Realisations r JOIN ValidPaths v ON v.id = r.outputPath
"""
_DERIVATION_OUTPUTS = """
SELECT o.path FROM DerivationOutputs o JOIN ValidPaths d ON d.id = o.drv WHERE d.path = ?
"""
_DEPENDENT_REALISATIONS = """
SELECT d.drvPath || '!' || d.outputName, v.path FROM RealisationsRefs rr
JOIN Realisations d ON d.id = rr.realisationReference JOIN ValidPaths v ON v.id = d.outputPath
WHERE rr.referrer = ?
"""


class StoreError(Exception):
    pass


class LocalStore:
    def __init__(self, root: str | os.PathLike[str] = "/", store_dir: str = STORE_DIR) -> None:
        self.root = Path(root)
        self.store_dir = store_dir.rstrip("/")
        self.real_store_dir = self.root / self.store_dir.lstrip("/")
        self.db_path = self.root / "nix/var/nix/db/db.sqlite"
        self.log_dir = self.root / "nix/var/log/nix/drvs"
        # Plain strings and bytes: these are used on every request, pathlib costs microseconds.
        self._db_files = (str(self.db_path), str(self.db_path) + "-wal")
        self._real_prefix = os.fsencode(self.real_store_dir) + b"/"
        self._db: aiosqlite.Connection | None = None
        self._immutable = False

    async def open(self) -> None:
        if not self.db_path.is_file():
            raise StoreError(f"no Nix database at {self.db_path}: is {self.root} a Nix store root?")
        self._db = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        """A read-only connection.

        Nix keeps its database in WAL mode. A reader that may not write to the database directory
        (peerix as an unprivileged service) cannot create the WAL index when no writer has the
        database open; the file is then quiescent, so it is read as immutable until a writer shows
        up (see `_current`). Once connected normally, this connection keeps the WAL alive itself.
        """
        uri = f"file:{self.db_path}?mode=ro"
        try:
            try:
                db = await self._checked(uri)
                self._immutable = False
            except sqlite3.OperationalError as error:
                log.info("database has no writer and its WAL cannot be created here; reading it as immutable "
                         "until one appears db=%s error=%s", self.db_path, error)
                db = await self._checked(uri + "&immutable=1")
                self._immutable = True
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.db_path} is not a readable Nix database: {error}") from None
        return db

    @staticmethod
    async def _checked(uri: str) -> aiosqlite.Connection:
        """A connection that has read the Nix schema, or none at all: a failed one is closed, since its
        thread would keep the process alive."""
        db = await aiosqlite.connect(uri, uri=True, timeout=2.0)
        try:
            await db.execute_fetchall("SELECT 1 FROM ValidPaths LIMIT 1")
            await db.execute("PRAGMA query_only = ON")
        except BaseException:
            await db.close()
            raise
        return db

    async def _current(self) -> aiosqlite.Connection:
        if self._immutable and os.path.exists(self._db_files[1]):
            await self.db.close()
            self._db = await self._connect()
        return self.db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> "LocalStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("local store is not open")
        return self._db

    async def query(self, hash_part: str) -> PathInfo | None:
        """Info for the valid path with this hash part, or None; the caller validates the hash."""
        prefix = f"{self.store_dir}/{hash_part}"
        rows = await (await self._current()).execute_fetchall(_QUERY_BY_HASH, (prefix + "-", prefix + "."))
        if not rows:
            return None
        return self._path_info(*next(iter(rows)))

    async def realisation(self, id_: str) -> Realisation | None:
        """The realisation `sha256:<hex>!<output>` of a content-addressed derivation built here, or None."""
        drv_hash, _, output = id_.partition("!")
        db = await self._current()
        rows = list(await _without_ca_tables(db.execute_fetchall(_REALISATION, (drv_hash, output))))
        if not rows:
            return None
        row, path, sigs = rows[0]
        dependent = await db.execute_fetchall(_DEPENDENT_REALISATIONS, (row,))
        try:
            return Realisation(id_, StorePath.parse(path, self.store_dir), tuple((sigs or "").split()),
                               tuple(sorted((key, StorePath.parse(out, self.store_dir).basename)
                                            for key, out in dependent)))
        except ValueError as error:
            log.warning("skipping an unreadable realisation id=%s error=%s", id_, error)
            return None

    async def realisations(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(id, output name `<hash>-<name>`, the output's signatures) of every realisation: what
        announcing needs, in one query."""
        start = len(self.store_dir) + 2
        rows = await _without_ca_tables((await self._current()).execute_fetchall(_ALL_REALISATIONS, (start,)))
        return [(id_, name, tuple((sigs or "").split())) for id_, name, sigs in rows]

    async def derivation_outputs(self, drv: StorePath) -> list[StorePath]:
        """The output paths the database records for a derivation (none for a content-addressed one,
        whose outputs are known by its realisations)."""
        rows = await (await self._current()).execute_fetchall(_DERIVATION_OUTPUTS, (drv.full(self.store_dir),))
        outputs = []
        for path, in rows:
            try:
                outputs.append(StorePath.parse(path, self.store_dir))
            except ValueError as error:
                log.warning("skipping an unreadable derivation output drv=%s error=%s", drv, error)
        return outputs

    def build_log(self, drv: StorePath) -> Path | None:
        """Where Nix keeps the build log of a derivation (`drvs/<2 chars>/<rest>`, bzip2ed or not)."""
        name = drv.basename
        for candidate in (self.log_dir / name[:2] / f"{name[2:]}.bz2", self.log_dir / name[:2] / name[2:]):
            if candidate.is_file():
                return candidate
        return None

    def read_build_log(self, drv: StorePath, limit: int) -> bytes | None:
        """The build log's text (blocking), or None: a longer log keeps its last `limit` bytes, after
        a line saying how much was left out."""
        path = self.build_log(drv)
        if path is None:
            return None
        kept, dropped = bytearray(), 0
        try:
            with (bz2.open(path) if path.suffix == ".bz2" else open(path, "rb")) as file:
                while chunk := file.read(1 << 20):
                    kept += chunk
                    if len(kept) > limit:
                        dropped += len(kept) - limit
                        del kept[:len(kept) - limit]
        except (OSError, EOFError, ValueError) as error:  # unreadable, or a broken bzip2 stream
            log.warning("unreadable build log path=%s error=%s", path, error)
            return None
        if dropped:
            return f"[peerix: the first {dropped} bytes of this log are left out]\n".encode() + kept
        return bytes(kept)

    async def signatures(self) -> list[tuple[str, tuple[str, ...]]]:
        """(name, signatures) of every valid path, the name being `<hash>-<name>`: what announcing needs,
        in one query."""
        start = len(self.store_dir) + 2  # SQL's substr counts from 1, and skips the slash
        rows = await (await self._current()).execute_fetchall("SELECT substr(path, ?), sigs FROM ValidPaths",
                                                              (start,))
        return [(name, tuple((sigs or "").split())) for name, sigs in rows]

    async def count(self) -> int:
        rows = await (await self._current()).execute_fetchall("SELECT count(*) FROM ValidPaths")
        return next(iter(rows))[0]

    def generation(self) -> tuple:
        """Changes whenever a commit lands in the database (main file or write-ahead log).

        Two stats, cheap enough for every request; used to drop cached path infos.
        """
        stamps = []
        for path in self._db_files:
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _path_info(
        self, path: str, hash_: str, registered: int, deriver: str | None,
        nar_size: int | None, sigs: str | None, ca: str | None, references: str | None,
    ) -> PathInfo | None:
        try:
            if not nar_size:
                raise ValueError("no NarSize recorded")
            return PathInfo(
                store_path=StorePath.parse(path, self.store_dir),
                nar_hash=parse_sha256(hash_),
                nar_size=nar_size,
                references=tuple(sorted(StorePath.parse(ref, self.store_dir) for ref in (references or "").split())),
                deriver=StorePath.parse(deriver, self.store_dir) if deriver else None,
                sigs=tuple((sigs or "").split()),
                ca=ca or None,
                registration_time=registered,
                store_dir=self.store_dir,
            )
        except ValueError as error:
            log.warning("skipping unreadable database row path=%s error=%s", path, error)
            return None

    def real_path(self, path: StorePath) -> bytes:
        return self._real_prefix + path.basename.encode()

    def has_files(self, path: StorePath) -> bool:
        """Whether the path's files are on disk: the database can outlive them."""
        try:
            os.lstat(self.real_path(path))
        except OSError:
            return False
        return True


async def _without_ca_tables(rows: Awaitable[Iterable[sqlite3.Row]]) -> list:
    """The rows of a query on the content-addressed tables, which Nix makes only once ca-derivations
    was enabled: none where they are missing."""
    try:
        return list(await rows)
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
