"""A real `peerix-tracker serve` process on loopback for tests, and ways to talk to it."""

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import nacl.signing
from prometheus_client.parser import text_string_to_metric_families

from peerix.net.tracker_protocol import ANNOUNCE_PATH, LOOKUP_PATH, sign
from peerix.nix import nix32

from conftest import ROOT, free_port

# Generous limits, so that only the tests about limits meet them.
UNLIMITED = ("--address-rate", "100000", "--address-burst", "100000", "--peer-rate", "100000",
             "--peer-burst", "100000")


class TrackerProcess:
    """`peerix-tracker serve` on a database (a file or a PostgreSQL URL); its log is kept for assertions."""

    def __init__(self, db: Path | str, log_path: Path, args: tuple[str, ...] = UNLIMITED,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None, https: Path | bool = False) -> None:
        self.db = db
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.host = host  # the address it listens on; it is always reached at 127.0.0.1 unless told otherwise
        self.port = free_port()
        # Serving TLS (--tls-cert): `https` is the CA the harness checks it with, or True not to check.
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        self.verify = ssl.create_default_context(cafile=str(https)) if isinstance(https, Path) else not https
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "serve", "--db", str(self.db),
                 "--listen", f"{self.host}:{self.port}", *self.args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/health", timeout=1, verify=self.verify)
                return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"peerix-tracker did not start:\n{self.log}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        return process.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, verify=self.verify, **kw)

    def metric(self, name: str) -> float:
        """The value of one sample of /metrics, e.g. 'peerix_tracker_announces_total{kind="delta"}' (0 if absent);
        the label every replica's own counters carry, `replica`, is not named."""
        wanted_name, _, labels = name.partition("{")
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == wanted_name and {k: v for k, v in sample.labels.items() if k != "replica"} == wanted:
                    return sample.value
        return 0.0


@contextmanager
def running_tracker(db: Path | str, directory: Path, *args: str,
                    limits: tuple[str, ...] = UNLIMITED) -> Iterator[TrackerProcess]:
    """A tracker for a whole test module (a database from conftest.new_database, a directory from
    tmp_path_factory), where tests cannot disturb each other."""
    tracker = TrackerProcess(db, directory / "tracker.log", (*limits, *args))
    try:
        yield tracker
    finally:
        tracker.stop()


def query(db: Path | str, sql: str) -> list[tuple]:
    """The rows of a query on a tracker's database, read as an operator would (sqlite3, or asyncpg)."""
    if isinstance(db, Path):
        with sqlite3.connect(db) as connection:
            return connection.execute(sql).fetchall()

    async def rows() -> list[tuple]:
        connection = await asyncpg.connect(db)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as thread:  # a loop of its own, so async tests may ask too
        return thread.submit(asyncio.run, rows()).result()


def assert_whole(db: Path | str) -> None:
    """The database is consistent: SQLite's own check, and on either, every holding names a known path and
    peer, every path is held by someone (no orphans), and the counts agree with the rows."""
    if isinstance(db, Path):
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "SELECT count(*) FROM holdings h WHERE NOT EXISTS (SELECT 1 FROM paths x WHERE x.id = h.path) "
                     "OR NOT EXISTS (SELECT 1 FROM peers p WHERE p.id = h.peer)") == [(0,)]
    assert query(db, "SELECT count(*) FROM paths x WHERE NOT EXISTS (SELECT 1 FROM holdings h WHERE h.path = x.id)"
                 ) == [(0,)]
    assert query(db, "SELECT count(*) FROM peers p WHERE paths <> (SELECT count(*) FROM holdings h "
                     "WHERE h.peer = p.id)") == [(0,)]
    if not isinstance(db, Path):
        assert query(db, "SELECT (SELECT paths FROM totals) = (SELECT count(*) FROM paths)") == [(True,)]


def new_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def random_hashes(count: int, rng: random.Random | None = None) -> list[str]:
    """Random hash parts: any 32 nix32 characters are one (32 x 5 bits make exactly 20 bytes)."""
    text = "".join((rng or random.Random()).choices(nix32.ALPHABET, k=32 * count))
    return [text[i:i + 32] for i in range(0, len(text), 32)]


def signed(tracker: TrackerProcess, key: nacl.signing.SigningKey, method: str, path: str, payload: object = None,
           *, body: bytes | None = None, headers: dict[str, str] | None = None, **sign_args) -> httpx.Response:
    """A request signed as `key` would sign it; `headers` override or add to the signature headers."""
    if body is None:
        body = b"" if payload is None else json.dumps(payload).encode()
    all_headers = {**sign(key, method, path, body, **sign_args), "content-type": "application/json", **(headers or {})}
    return httpx.request(method, tracker.url + path, content=body, headers=all_headers, timeout=30)


def announcement(name: str = "host", **change: object) -> dict:
    """An announce body: `hashes=[...]` for a full announce, `since=..., added=[...], removed=[...]` for a delta."""
    return {"name": name, "addresses": {"direct": ["127.0.0.1:4433"], "relay_url": None}, **change}


def announce(tracker: TrackerProcess, key: nacl.signing.SigningKey, *, headers: dict[str, str] | None = None,
             timestamp: int | None = None, **change: object) -> httpx.Response:
    """A signed announce; `change` as for `announcement`."""
    return signed(tracker, key, "POST", ANNOUNCE_PATH, announcement(**change), headers=headers, timestamp=timestamp)


def error_of(response: httpx.Response) -> str:
    """The stable error code of a refusal, after checking the shape every 4xx must have."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"], error
    return error["code"]


def holders(tracker: TrackerProcess, hash_part: str) -> list[str]:
    """The peer ids a lookup names for a hash part, most recently seen first."""
    response = tracker.get(f"{LOOKUP_PATH}/{hash_part}")
    assert response.status_code == 200, response.text
    return [peer["peer_id"] for peer in response.json()["peers"]]
