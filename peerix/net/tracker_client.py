"""The daemon's client of the tracker: signed announces with delta sync, lookups, fast failure, failover.

    client = TrackerClient("https://tracker.example.org", seed, state_dir)   # token="..." for a token network
    client = TrackerClient(["https://t1.example.org", "https://t2.example.org"], seed, state_dir)  # replicas
    await client.announce(hash_parts, PeerAddresses(client.peer_id, ("192.0.2.4:4433",)), "host-a")
    await client.heartbeat()                        # every HEARTBEAT_INTERVAL; or announce an unchanged set
    peers = await client.lookup(hash_part)          # online peers holding it, most recently seen first
    found = await client.lookup_many(hash_parts)    # {hash_part: [PeerRecord, ...]} for every hash asked
    await client.deregister()
    await client.aclose()

Delta sync: the set the tracker acknowledged last and its sequence number are kept in
`state_dir/tracker-<digest of the URLs>.state` (a JSON line, then the packed 20-byte hashes; replaced
atomically), so a restarted daemon sends what changed, not everything. The first announce, and any
after the tracker answers 409, send the full set; a set larger than `max_hashes_per_request` goes as
a full announce of its first part and deltas for the rest. If the tracker's count of the peer's set
disagrees with the client's after a delta, the client sends the full set at once.

Failover: with several trackers (replicas of one database) the client uses one at a time. When it is
unreachable, times out or answers 5xx, that tracker backs off (1 s doubling to 60 s, with jitter)
and the same call goes on to the next one that is not backing off, so a lookup survives a dead
replica within its request; the client stays with the one that answered. The sync state is the
client's, not a tracker's: the next announce is a delta to whichever tracker answers (replicas share
the sequence numbers; an independent tracker answers 409 and gets the full set).

Failing fast: the daemon must answer Nix within 100 ms when the trackers are down. The connect timeout
is short, lookups have a timeout of their own (`lookup_timeout`: long enough for a busy tracker's
answer, which is worth the wait; the daemon does not wait that long for a hung one), and a call tries
each tracker at most once. When every tracker is backing off, or after a 429 (for its Retry-After: a
rate limit is not a reason to ask the next replica), the client as a whole is backed off. A refusal
that will not go away by itself (400, 401 other than a stale timestamp or a replay, 403, 413: not a
member, no token or a wrong one, a request too large) is logged once as an error and backs off for
REFUSED_BACKOFF, so a refused daemon asks once every few minutes, not every second; a 409 is no refusal
of that kind, it asks for the full set. During a backoff every call raises TrackerError at once,
without touching the network; `in_backoff` and `backoff_remaining` tell the announce loop when to try
again. The one retry the client makes by itself is for a request refused as stale: it corrects its
clock by the tracker's Date header and signs again.

TLS: an https tracker's certificate is verified against the system's CAs, or a CA file's alone (`tls_context`).
A certificate that does not check out (another CA, another name) stops the request in the TLS
handshake, before a byte of it (the network token included) is sent; it is logged once, as one
error line saying why, and that tracker is left alone for REFUSED_BACKOFF like a lasting refusal.

Lookups leave this peer itself out. Invalid hash parts raise ValueError: they are the caller's bug.
"""

import asyncio
import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import nacl.signing

from .tracker_protocol import (
    ANNOUNCE_PATH,
    HASH_BYTES,
    LEASES_PATH,
    LOOKUP_PATH,
    MEMBERS_PATH,
    PEERS_PATH,
    TOKEN_SCHEME,
    pack_hash,
    peer_id,
    sign,
    unpack_hash,
)

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 60.0  # the tracker's default offline TTL is three of these
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
REFUSED_BACKOFF = 300.0  # after a lasting refusal, with the same jitter
_LASTING = (400, 401, 403, 413)
_PASSING = ("stale_timestamp", "replayed")  # 401s that a new signature or a corrected clock may mend
_HINTS = {
    "not_member": "is this peer id on the tracker's allowlist, or does tracker_token_file hold the network's token?",
    "unauthenticated": "does the tracker want a network token (tracker_token_file)?",
    "body_too_large": "the tracker's max_body is below this daemon's announces",
    "too_many_hashes": "the tracker's max_announce_hashes is below this daemon's announces",
}
LOOKUP_BATCH = 1000
_STATE_FORMAT = "peerix-tracker-state/1"


@dataclass(frozen=True)
class PeerAddresses:
    endpoint_id: str
    direct: tuple[str, ...] = ()
    relay_url: str | None = None
    http_url: str | None = None
    incarnation: str | None = None  # random per daemon process: a new one means the peer restarted

    def to_json(self) -> dict:
        return {"endpoint_id": self.endpoint_id, "direct": list(self.direct), "relay_url": self.relay_url,
                "http_url": self.http_url} | ({"incarnation": self.incarnation} if self.incarnation else {})


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    name: str
    addresses: PeerAddresses
    last_seen: float
    paths: int = 0
    online: bool = True

    @classmethod
    def from_json(cls, data: dict) -> "PeerRecord":
        addresses = data["addresses"]
        return cls(
            peer_id=str(data["peer_id"]), name=str(data["name"]),
            addresses=PeerAddresses(str(addresses["endpoint_id"]), tuple(map(str, addresses["direct"])),
                                    addresses.get("relay_url"), addresses.get("http_url"),
                                    addresses.get("incarnation")),
            last_seen=float(data["last_seen"]), paths=int(data.get("paths", 0)), online=bool(data.get("online", True)),
        )


@dataclass(frozen=True)
class Members:
    """The tracker's membership and, under closed membership, the peers it lists as members."""

    membership: str
    version: str
    members: frozenset[str] | None  # None: unchanged since the version asked about


class TrackerError(Exception):
    """The tracker refused (status and code say how) or is unreachable (status is None)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None, lasting: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.lasting = lasting  # a refusal that asking again soon would not change; the client logged it


@dataclass
class _Tracker:
    url: str
    failures: int = 0  # in a row, for the backoff's doubling
    down_until: float = 0.0  # monotonic time until which it is not asked

    def backing_off(self, now: float) -> bool:
        return self.down_until > now


class TrackerClient:
    def __init__(self, urls: str | Sequence[str], seed: bytes, state_dir: Path, *, timeout: float = 5.0,
                 connect_timeout: float = 0.5, lookup_timeout: float = 2.0, token: str | None = None,
                 max_hashes_per_request: int = 100_000, tls: ssl.SSLContext | None = None) -> None:
        self.urls = tuple(url.rstrip("/") for url in ([urls] if isinstance(urls, str) else urls))
        if not self.urls:
            raise ValueError("a tracker client needs at least one tracker URL")
        self._trackers = [_Tracker(url) for url in self.urls]
        self._current = 0  # the tracker in use: the last one that answered
        self._key = nacl.signing.SigningKey(seed)
        self.peer_id = peer_id(self._key)
        self.max_hashes_per_request = max_hashes_per_request
        self._lookup_timeout = httpx.Timeout(lookup_timeout, connect=min(connect_timeout, lookup_timeout))
        headers = {"authorization": f"{TOKEN_SCHEME} {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                       verify=tls or tls_context(None))
        self._warned_plain = False
        self._identity = " ".join(self.urls)  # whose sequence numbers the sync state holds
        digest = hashlib.sha256(self._identity.encode()).hexdigest()[:16]
        self._state_path = Path(state_dir) / f"tracker-{digest}.state"
        self._acked: set[bytes] = set()  # the set the tracker acknowledged last...
        self._seq: int | None = None     # ...under this sequence number (None: nothing acknowledged)
        self._paths: int | None = None   # the tracker's count of that set
        self._loaded = False
        self._saved_seq: int | None = None
        self._last: tuple[PeerAddresses, str] | None = None
        self._write_lock = asyncio.Lock()
        self._paused_until = 0.0  # a 429 or a lasting refusal: no tracker is asked until then
        self._pause_lasting = False  # the pause is a lasting refusal's (already logged)
        self._clock_offset = 0.0
        self.advice: dict[str, int] = {}  # what the tracker's last announce answer advised, e.g. max_upload_rate

    @property
    def url(self) -> str:
        """The tracker in use."""
        return self.urls[self._current]

    # Backoff

    @property
    def backoff_remaining(self) -> float:
        """Seconds until some tracker may be asked again (0 while one may be now)."""
        now = time.monotonic()
        down = min(tracker.down_until for tracker in self._trackers)
        return max(0.0, self._paused_until - now, down - now)

    @property
    def in_backoff(self) -> bool:
        return self.backoff_remaining > 0

    def _down(self, tracker: _Tracker, message: str, status: int | None = None) -> TrackerError:
        """The tracker failed (unreachable, a timeout, a 5xx): it is not asked again for a while."""
        tracker.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (tracker.failures - 1)) * random.uniform(0.8, 1.2)
        tracker.down_until = time.monotonic() + delay
        return TrackerError(f"{message}; backing off for {delay:.1f} s", status=status, retry_after=delay)

    def _untrusted(self, tracker: _Tracker, error: ssl.SSLCertVerificationError) -> TrackerError:
        """The tracker's certificate does not check out: not a passing fault. One line (requests under way
        at the same moment fail alike, and say nothing more), then minutes alone."""
        reason = error.verify_message or str(error)
        if tracker.backing_off(time.monotonic()):
            return TrackerError(f"tracker {tracker.url} certificate rejected: {reason}", lasting=True)
        delay = REFUSED_BACKOFF * random.uniform(0.8, 1.2)
        tracker.down_until = time.monotonic() + delay
        log.error("tracker certificate rejected, nothing was sent, not asking again for %.0f s tracker=%s "
                  "reason=%r hint=%r", delay, tracker.url, reason,
                  "tracker_ca_file must name the CA that signed the tracker's certificate (else the system's CAs "
                  "are used), and the certificate must be for the URL's host name")
        return TrackerError(f"tracker {tracker.url} certificate rejected: {reason}", retry_after=delay, lasting=True)

    def warn_plain_http(self) -> None:
        """Under closed membership the token and the signed requests should not cross a network in clear:
        said once."""
        if self._warned_plain:
            return
        self._warned_plain = True
        for url in self.urls:
            parts = httpx.URL(url)
            if parts.scheme == "http" and not _loopback(parts.host):
                log.warning("tracker over plain HTTP under closed membership: its token and requests cross the "
                            "network unencrypted tracker=%s hint='serve it over TLS (peerix-tracker serve "
                            "--tls-cert/--tls-key) and use https://'", url)

    def _pause(self, message: str, delay: float, status: int) -> TrackerError:
        self._paused_until, self._pause_lasting = time.monotonic() + delay, False
        return TrackerError(f"{message}; backing off for {delay:.1f} s", status=status, retry_after=delay)

    def _in_turn(self) -> Iterator[tuple[int, _Tracker]]:
        """The trackers to ask, the one in use first, then the next ones in order; none that is backing off."""
        now = time.monotonic()
        count = len(self._trackers)
        for step in range(count):
            index = (self._current + step) % count
            if not self._trackers[index].backing_off(now):
                yield index, self._trackers[index]

    # Announces

    async def announce(self, hashes: Iterable[str], addresses: PeerAddresses, name: str) -> None:
        """Make the tracker hold exactly `hashes` for this peer, by a delta when it can."""
        wanted = {pack_hash(text): text for text in hashes}
        async with self._write_lock:
            self._last = (addresses, name)
            await self._load_state()
            try:
                if self._seq is not None:
                    added = [text for packed, text in wanted.items() if packed not in self._acked]
                    removed = [packed for packed in self._acked if packed not in wanted]
                    if await self._send_delta(added, removed):
                        return
                await self._send_full(wanted)
            finally:
                await self._save_state()

    async def heartbeat(self) -> None:
        """Tell the tracker this peer is alive: an empty delta, or the full set again if the tracker lost it."""
        async with self._write_lock:
            await self._load_state()
            if self._last is None or self._seq is None:
                raise TrackerError("nothing announced yet: call announce() first")
            try:
                if not await self._send_delta([], []):
                    await self._send_full({packed: unpack_hash(packed) for packed in self._acked})
            finally:
                await self._save_state()

    async def _send_delta(self, added: list[str], removed: list[bytes]) -> bool:
        """Send the changes in deltas; False when the tracker wants the full set instead."""
        step = self.max_hashes_per_request
        changes = [(text, True) for text in added] + [(unpack_hash(packed), False) for packed in removed]
        for start in range(0, max(len(changes), 1), step):
            part = changes[start:start + step]
            try:
                answer = await self._announce_request({
                    "since": self._seq,
                    "added": [text for text, add in part if add],
                    "removed": [text for text, add in part if not add],
                })
            except TrackerError as error:
                if error.status == 409:
                    log.info("tracker wants the full set tracker=%s reason=%s", self.url, error)
                    return False
                raise
            for text, add in part:
                (self._acked.add if add else self._acked.discard)(pack_hash(text))
            self._acknowledge(answer)
        if self._paths != len(self._acked):
            log.warning("tracker disagrees about this peer's set, sending it whole tracker=%s tracker_paths=%s "
                        "local_paths=%d", self.url, self._paths, len(self._acked))
            return False
        return True

    async def _send_full(self, wanted: dict[bytes, str]) -> None:
        step = self.max_hashes_per_request
        texts = list(wanted.values())
        self._seq = None
        answer = await self._announce_request({"hashes": texts[:step]})
        self._acked = set(list(wanted)[:step])
        self._acknowledge(answer)
        for start in range(step, len(texts), step):
            answer = await self._announce_request({"since": self._seq, "added": texts[start:start + step]})
            self._acked.update(pack_hash(text) for text in texts[start:start + step])
            self._acknowledge(answer)

    async def _announce_request(self, change: dict) -> dict:
        assert self._last is not None
        addresses, name = self._last
        return await self._request("POST", ANNOUNCE_PATH, {"name": name, "addresses": addresses.to_json(), **change})

    def _acknowledge(self, answer: dict) -> None:
        advice = answer.get("advice")  # an answer without it withdraws what the tracker advised before
        self.advice = {k: v for k, v in advice.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
                       } if isinstance(advice, dict) else {}
        try:
            self._seq, self._paths = int(answer["seq"]), int(answer["paths"])
        except (KeyError, TypeError, ValueError):
            self._seq = None
            raise TrackerError(f"tracker {self.url} answered an announce without seq and paths") from None

    async def deregister(self, forget: bool = False) -> None:
        """Leave: the tracker stops naming this peer at once but keeps its set, so that the next start
        sends a delta. With `forget`, the tracker drops the set too and the sync state goes."""
        async with self._write_lock:
            await self._load_state()
            try:
                await self._request("DELETE", f"{PEERS_PATH}/{self.peer_id}", {"forget": True} if forget else None)
            except TrackerError as error:
                if error.status != 404:
                    raise
            if forget:
                self._acked, self._seq, self._paths = set(), None, None
                await self._save_state()

    # Lookups

    async def lookup(self, hash_part: str) -> list[PeerRecord]:
        pack_hash(hash_part)
        answer = await self._request("GET", f"{LOOKUP_PATH}/{hash_part}", timeout=self._lookup_timeout)
        return self._records(answer.get("peers"), skip_self=True)

    async def lookup_many(self, hash_parts: Sequence[str]) -> dict[str, list[PeerRecord]]:
        for hash_part in hash_parts:
            pack_hash(hash_part)
        found: dict[str, list[PeerRecord]] = {hash_part: [] for hash_part in hash_parts}
        for start in range(0, len(hash_parts), LOOKUP_BATCH):
            answer = await self._request("POST", LOOKUP_PATH, {"hashes": list(hash_parts[start:start + LOOKUP_BATCH])},
                                         timeout=self._lookup_timeout)
            peers = self._records(answer.get("peers"))
            try:
                for hash_part, indexes in answer["results"].items():
                    found[hash_part] = [peers[i] for i in indexes if peers[i].peer_id != self.peer_id]
            except (AttributeError, KeyError, IndexError, TypeError):
                raise TrackerError(f"tracker {self.url} answered a malformed batch lookup") from None
        return found

    async def members(self, since: str | None = None) -> Members:
        """The tracker's membership and member list; with `since`, the list only when it changed."""
        answer = await self._request("GET", MEMBERS_PATH + (f"?since={since}" if since else ""))
        try:
            listed = answer.get("members")
            members = None if listed is None else frozenset(str(peer) for peer in listed)
            return Members(str(answer["membership"]), str(answer["version"]), members)
        except (KeyError, TypeError):
            raise TrackerError(f"tracker {self.url} answered a malformed member list") from None

    async def peers(self) -> list[PeerRecord]:
        return self._records((await self._request("GET", PEERS_PATH)).get("peers"))

    # Pull-through leases

    async def lease(self, hash_part: str, done: bool = False) -> tuple[bool, PeerRecord | None, float]:
        """Take or renew the path's pull-through lease (`done`: our copy is whole, keep naming us while
        our announce is on its way): whether it is ours, who holds it otherwise (when the tracker
        knows), and how long a lease lasts without a renewal."""
        pack_hash(hash_part)
        answer = await self._request("POST", f"{LEASES_PATH}/{hash_part}{'?done=1' if done else ''}",
                                     timeout=self._lookup_timeout)
        holder = answer.get("holder")
        try:
            return bool(answer["granted"]), self._records([holder])[0] if holder else None, float(answer["ttl"])
        except (KeyError, TypeError, ValueError):
            raise TrackerError(f"tracker {self.url} answered a malformed lease") from None

    async def release_lease(self, hash_part: str) -> None:
        pack_hash(hash_part)
        await self._request("DELETE", f"{LEASES_PATH}/{hash_part}", timeout=self._lookup_timeout)

    def _records(self, items: object, skip_self: bool = False) -> list[PeerRecord]:
        try:
            records = [PeerRecord.from_json(item) for item in items]  # type: ignore[union-attr]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise TrackerError(f"tracker {self.url} answered malformed peer records") from None
        return [record for record in records if not (skip_self and record.peer_id == self.peer_id)]

    async def aclose(self) -> None:
        await self._http.aclose()

    # HTTP

    async def _request(self, method: str, path: str, payload: dict | None = None,
                       timeout: httpx.Timeout | None = None) -> dict:
        """Ask the tracker in use, else the next ones in turn (each once); the answer of the first that answers."""
        if self.in_backoff:  # a request that was under way when a refusal came back says nothing more
            raise TrackerError(f"tracker {self.url} is backed off for {self.backoff_remaining:.1f} s",
                               retry_after=self.backoff_remaining,
                               lasting=self._pause_lasting and self._paused_until > time.monotonic())
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        extra = {"timeout": timeout} if timeout is not None else {}
        failure: TrackerError | None = None
        for index, tracker in self._in_turn():
            if failure is not None:
                log.warning("tracker failed, asking the next one tracker=%s next=%s error=%s", self.url, tracker.url,
                            failure)
            self._current = index
            try:
                response = await self._send(tracker, method, path, body, payload is not None, extra)
            except httpx.TransportError as error:
                if (untrusted := _certificate_error(error)) is not None:
                    failure = self._untrusted(tracker, untrusted)
                else:
                    failure = self._down(tracker, f"tracker {tracker.url} unreachable ({type(error).__name__}: "
                                                  f"{error})")
                continue
            if response.status_code >= 500:
                failure = self._down(tracker, f"tracker {tracker.url} failed with {response.status_code}",
                                     response.status_code)
                continue
            tracker.failures = 0
            return self._answer(response)
        assert failure is not None  # not in backoff: some tracker was asked
        raise failure

    async def _send(self, tracker: _Tracker, method: str, path: str, body: bytes, json_body: bool,
                    extra: dict) -> httpx.Response:
        """One signed request to one tracker, signed again once if it finds the clock wrong."""
        for attempt in range(2):
            headers = sign(self._key, method, path, body, timestamp=int(time.time() + self._clock_offset))
            if json_body:
                headers["content-type"] = "application/json"
            response = await self._http.request(method, tracker.url + path, content=body, headers=headers, **extra)
            if attempt == 0 and response.status_code == 401 and _code(response) == "stale_timestamp":
                self._correct_clock(response)
                continue
            break
        return response

    def _answer(self, response: httpx.Response) -> dict:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        if status == 429:
            header = response.headers.get("retry-after", "")
            retry_after = float(header) if header.isdigit() else BACKOFF_START
            raise self._pause(f"tracker {self.url} is rate limiting this peer", retry_after, status)
        if status >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            code, reason = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, None)
            if status in _LASTING and code not in _PASSING:
                raise self._refused(status, code, reason)
            raise TrackerError(f"tracker {self.url} refused: {status} {code}: {reason}", status=status, code=code)
        if not isinstance(data, dict):
            raise TrackerError(f"tracker {self.url} answered {status} without a JSON object")
        return data

    def _refused(self, status: int, code: str | None, reason: str | None) -> TrackerError:
        """A lasting refusal: back off for minutes, and say so once (the client asks nothing meanwhile, and
        a request under way at the same moment, refused alike, says nothing more)."""
        if self._paused_until > time.monotonic():
            return TrackerError(f"tracker {self.url} refused: {status} {code}: {reason}", status=status, code=code,
                                retry_after=self._paused_until - time.monotonic(), lasting=True)
        delay = REFUSED_BACKOFF * random.uniform(0.8, 1.2)
        self._paused_until, self._pause_lasting = time.monotonic() + delay, True
        hint = _HINTS.get(code or "")
        log.error("tracker refused this peer, not asking again for %.0f s tracker=%s peer=%s status=%d code=%s "
                  "message=%r%s", delay, self.url, self.peer_id, status, code, reason,
                  f" hint={hint!r}" if hint else "")
        return TrackerError(f"tracker {self.url} refused: {status} {code}: {reason}; not asking again for "
                            f"{delay:.0f} s", status=status, code=code, retry_after=delay, lasting=True)

    def _correct_clock(self, response: httpx.Response) -> None:
        try:
            tracker_time = email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return
        self._clock_offset = tracker_time + 0.5 - time.time()  # Date has whole seconds
        log.warning("clock differs from the tracker's, correcting tracker=%s offset=%.1f", self.url, self._clock_offset)

    # Sync state on disk

    async def _load_state(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            data = await asyncio.to_thread(self._state_path.read_bytes)
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("cannot read tracker state, announcing in full path=%s error=%s", self._state_path, error)
            return
        header, _, packed = data.partition(b"\n")
        try:
            meta = json.loads(header)
            valid = (meta["format"] == _STATE_FORMAT and meta["tracker"] == self._identity
                     and meta["peer"] == self.peer_id and len(packed) == meta["count"] * HASH_BYTES
                     and isinstance(meta["seq"], int))
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            log.warning("ignoring unusable tracker state, announcing in full path=%s", self._state_path)
            return
        self._acked = {packed[i:i + HASH_BYTES] for i in range(0, len(packed), HASH_BYTES)}
        self._seq = self._saved_seq = meta["seq"]
        self._paths = len(self._acked)

    async def _save_state(self) -> None:
        """Write the acknowledged set when it changed (every change takes a new sequence number)."""
        if self._seq == self._saved_seq:
            return
        self._saved_seq = self._seq
        if self._seq is None:
            await asyncio.to_thread(self._state_path.unlink, missing_ok=True)
            return
        meta = {"format": _STATE_FORMAT, "tracker": self._identity, "peer": self.peer_id, "seq": self._seq,
                "count": len(self._acked)}
        data = json.dumps(meta).encode() + b"\n" + b"".join(self._acked)
        await asyncio.to_thread(_write_atomically, self._state_path, data)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """What a tracker's certificate must chain to: the system's CAs, as every other program on the host
    trusts them, or the CA file's alone. TrackerError when the file cannot be used."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise TrackerError(f"tracker CA file {ca_file}: {getattr(error, 'strerror', None) or error}") from None


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check behind a connection failure, if that is what failed."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash of the daemon leaves the old file or the new one, never a mix.

    Not fsynced: a file that a power cut loses or truncates fails the header's count check and costs
    one full announce, which is cheaper than an fsync on every change of the store.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
