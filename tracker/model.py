"""The tracker's API formats: request bodies parsed and validated, peers rendered. Pure functions.

Every refusal is an ApiError, answered as `{"error": {"code": ..., "message": ...}}` with its HTTP
status: programs branch on the stable code, people read the message. Unknown fields are ignored,
so a newer daemon can talk to an older tracker.
"""

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from peerix.net.tracker_protocol import pack_hash
from peerix.nix.storepath import is_hash_part

MAX_NAME_LENGTH = 64
MAX_DIRECT_ADDRESSES = 16
MAX_URL_LENGTH = 512
MAX_INCARNATION_LENGTH = 64


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


@dataclass(frozen=True)
class Addresses:
    """How other peers reach this one: its iroh endpoint, and optionally plain HTTP. The incarnation
    (random per daemon process, optional) tells other peers that the peer restarted."""

    endpoint_id: str
    direct: tuple[str, ...] = ()
    relay_url: str | None = None
    http_url: str | None = None
    incarnation: str | None = None

    def to_json(self) -> dict:
        return {"endpoint_id": self.endpoint_id, "direct": list(self.direct), "relay_url": self.relay_url,
                "http_url": self.http_url} | ({"incarnation": self.incarnation} if self.incarnation else {})

    @classmethod
    def from_json(cls, data: dict) -> "Addresses":
        return cls(data["endpoint_id"], tuple(data["direct"]), data["relay_url"], data["http_url"],
                   data.get("incarnation"))


@dataclass(frozen=True)
class Announce:
    """A full announce (`hashes` is the whole set) or a delta against sequence `since`."""

    name: str
    addresses: Addresses
    hashes: list[bytes] | None = None
    since: int | None = None
    added: list[bytes] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.hashes is not None:
            return "full"
        return "delta" if self.added or self.removed else "heartbeat"


@dataclass(frozen=True)
class Peer:
    """A peer as the tracker holds it; `row` is its compact id inside the database."""

    row: int
    key: bytes
    name: str
    addresses: Addresses
    seq: int
    paths: int
    first_seen: float
    last_seen: float
    departed: float | None = None  # when it deregistered, keeping its set for a delta on return

    @cached_property
    def peer_id(self) -> str:
        return self.key.hex()

    @classmethod
    def from_row(cls, row: Sequence) -> "Peer":
        """A peer from the storages' columns: id, key, name, addresses (JSON), seq, paths, first_seen,
        last_seen, departed."""
        id_, key, name, addresses, seq, paths, first_seen, last_seen, departed = row
        return cls(id_, key, name, Addresses.from_json(json.loads(addresses)), seq, paths, first_seen, last_seen,
                   departed)

    def is_online(self, online_since: float) -> bool:
        """Heard from since `online_since` (now minus the offline TTL) and not departed."""
        return self.departed is None and self.last_seen >= online_since

    @cached_property
    def record(self) -> str:
        """The peer's JSON in lookup answers, rendered once: a lookup only joins these."""
        return dumps({"peer_id": self.peer_id, "name": self.name, "addresses": self.addresses.to_json(),
                       "last_seen": round(self.last_seen, 3), "paths": self.paths})


def dumps(value: object) -> str:
    """Compact JSON, as every answer is written."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise invalid(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_deregister(body: bytes) -> bool:
    """Whether a deregistration asks to be forgotten (its set dropped) rather than to leave for now."""
    if not body:
        return False
    forget = parse_json(body).get("forget", False)
    if not isinstance(forget, bool):
        raise invalid("forget must be true or false")
    return forget


def parse_announce(body: bytes, peer_id: str, max_hashes: int) -> Announce:
    data = parse_json(body)
    name, addresses = _name(data.get("name")), _addresses(data.get("addresses"), peer_id)
    if ("hashes" in data) == ("since" in data) or ("hashes" in data and ("added" in data or "removed" in data)):
        raise invalid("an announce has either hashes (the full set) or since, added and removed (a delta)")
    if "hashes" in data:
        return Announce(name, addresses, hashes=parse_hashes(data, "hashes", max_hashes))
    since = data["since"]
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        raise invalid("since must be the sequence number of the last acknowledged announce")
    added = parse_hashes(data, "added", max_hashes)
    removed = parse_hashes(data, "removed", max_hashes - len(added))
    if not set(added).isdisjoint(removed):
        raise invalid("a hash cannot be both added and removed")
    return Announce(name, addresses, since=since, added=added, removed=removed)


def parse_lookup(body: bytes, max_hashes: int, max_limit: int) -> tuple[dict[str, bytes], int]:
    """The hash parts asked for (each once, in order) with their packed form, and the most peers per hash."""
    data = parse_json(body)
    if "hashes" not in data:
        raise invalid("a batch lookup needs hashes, a list of store path hash parts")
    packed = parse_hashes(data, "hashes", max_hashes)
    return dict(zip(data["hashes"], packed, strict=True)), parse_limit(data.get("limit"), max_limit)


def parse_limit(value: object, maximum: int) -> int:
    if value is None:
        return maximum
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():  # 5.0 is an integer in JSON
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"limit must be a positive integer, got {str(value)[:32]!r}")
    return min(value, maximum)


def parse_hashes(data: dict, name: str, budget: int) -> list[bytes]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list of store path hash parts")
    if len(value) > budget:
        raise ApiError(413, "too_many_hashes", f"at most {budget} hashes fit in this request; "
                       "split larger sets into a full announce and deltas")
    try:
        return [pack_hash(item) for item in value]
    except (TypeError, ValueError):
        index, item = next((i, item) for i, item in enumerate(value)
                           if not isinstance(item, str) or not is_hash_part(item))
        raise ApiError(400, "invalid_hash", f"{name}[{index}] is not a store path hash part "
                       f"(32 nix32 characters): {str(item)[:64]!r}") from None


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise invalid(f"name must be printable text of 1 to {MAX_NAME_LENGTH} characters")
    return value.strip()


def _addresses(value: object, peer_id: str) -> Addresses:
    if not isinstance(value, dict):
        raise invalid("addresses must be an object with endpoint_id, direct, relay_url and http_url")
    endpoint_id = value.get("endpoint_id", peer_id)
    if endpoint_id != peer_id:
        raise ApiError(403, "forbidden", "addresses.endpoint_id must be the signing peer's own id")
    direct = value.get("direct", [])
    if not isinstance(direct, list) or len(direct) > MAX_DIRECT_ADDRESSES:
        raise invalid(f"addresses.direct must be a list of at most {MAX_DIRECT_ADDRESSES} IP:PORT")
    return Addresses(
        endpoint_id=peer_id,
        direct=tuple(_socket_address(item) for item in direct),
        relay_url=_url(value.get("relay_url"), "relay_url"),
        http_url=_url(value.get("http_url"), "http_url"),
        incarnation=_incarnation(value.get("incarnation")),
    )


def _incarnation(value: object) -> str | None:
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_INCARNATION_LENGTH
                         and value.isascii() and value.isalnum()):
        return value
    raise invalid(f"addresses.incarnation must be 1 to {MAX_INCARNATION_LENGTH} ASCII letters or digits")


def _socket_address(value: object) -> str:
    """IP:PORT, with an IPv6 address in brackets; returned in its canonical spelling."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
        if bracketed != (ip.version == 6) or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise invalid(f"addresses.direct entries are IP:PORT ([IPv6]:PORT), got {str(value)[:80]!r}") from None
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def _url(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_URL_LENGTH and value.isprintable() and " " not in value:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise invalid(f"addresses.{name} must be an http or https URL of at most {MAX_URL_LENGTH} characters")


def render_lookup(hash_part: str, peers: list[Peer]) -> str:
    return f'{{"hash":"{hash_part}","peers":[{",".join(peer.record for peer in peers)}]}}'


def render_lease(hash_part: str, granted: bool, until: float, ttl: float, holder: Peer | None) -> str:
    """A lease as it stands: granted to the asker, or held by `holder` (its record, to fetch from it)."""
    return (f'{{"hash":"{hash_part}","granted":{"true" if granted else "false"},"until":{round(until, 3)},'
            f'"ttl":{ttl},"holder":{holder.record if holder else "null"}}}')


def render_batch(found: dict[str, list[Peer]]) -> str:
    """Each peer once, in `peers`; `results` maps each hash held by someone to indexes into it."""
    index: dict[int, int] = {}
    records: list[str] = []
    results: list[str] = []
    for hash_part, peers in found.items():
        if not peers:
            continue
        refs = []
        for peer in peers:
            position = index.get(peer.row)
            if position is None:
                position = index[peer.row] = len(records)
                records.append(peer.record)
            refs.append(str(position))
        results.append(f'"{hash_part}":[{",".join(refs)}]')
    return f'{{"peers":[{",".join(records)}],"results":{{{",".join(results)}}}}}'


def render_peer(peer: Peer, online: bool) -> str:
    """The peer's record with what a listing adds: whether it is online, and since when it is known."""
    return f'{peer.record[:-1]},"online":{"true" if online else "false"},"first_seen":{round(peer.first_seen, 3)}}}'


def error_json(error: ApiError) -> str:
    return dumps(error.body())
