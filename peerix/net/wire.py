"""The peer-to-peer wire format spoken over iroh QUIC streams.

Every request and every response header is one frame: a 4-byte big-endian length, then a JSON
object. A request opens a bidirectional stream; the answer comes back on it.

`/peerix/narinfo/1`  request `{"hash": <store path hash part>, "references": true (optional)}`
                     answer  `{"status": "ok", "narinfo": <text>}` or `{"status": "not-found"}`; asked
                     for references, the ok answer adds `"references": [<text>, ...]`: narinfos of the
                     path's references the peer holds (closure prefetch, swarm/prefetch.py)
`/peerix/nar/1`      request `{"hash": <hash part>, "nar_hash": <nix32>, "offset": n, "length": n|null,
                              "zstd": "prefer"|"accept" (optional), "http": true (optional)}`
                     answer  `{"status": "ok", "size": n}` followed by exactly n raw NAR bytes (the
                     requested range), or with `"encoding": "zstd-blocks"` the same n bytes as
                     blocks (compression.py); or `{"status": "not-found"}`; the stream then finishes.
                     Asked with `"http": true`, a peer may answer `{"status": "ok", "size": n,
                     "http": {"port": p, "ticket": t}}` and send no bytes: they are at
                     `GET /store/nar/<nar_hash>.nar?hash=<hash>` on TCP port p of its address, with
                     the header `x-peerix-ticket: t` and the range (fast_path.py)
`/peerix/log/1`      request `{"drv": <derivation basename>}`
                     answer  `{"status": "ok", "size": n}` followed by the n bytes of its build log (at
                     most 16 MiB: the end of a longer one), or `{"status": "not-found"}`
`/peerix/summary/1`  request `{}`
                     answer  `{"status": "ok", "format": "fuse8-blake2b64", "generation": g, "size": n}`
                     followed by the n bytes of the peer's store summary (store_filter.py), or
                     `{"status": "not-found"}` from a peer that publishes none
`/peerix/realisation/1`  request `{"id": "sha256:<hex>!<output>"}`
                     answer  `{"status": "ok", "realisation": <JSON text, as Nix's .doi>}` or
                     `{"status": "not-found"}`

A range is asked for so that a transfer can resume, or be split between peers; a peer that
answers with fewer bytes than it announced has failed. A peer pulling a NAR through from the upstream
serves the part it has and the rest as it arrives, unless the request says `"growing": false`.
`zstd`: "prefer" asks for compression (a slow link), "accept" leaves it to the sender (which
compresses when its own upload is slow); absent, the bytes come raw. Status values other than "ok" carry
an optional "message". Unknown fields are ignored, so fields can be added within version 1.
"""

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

NARINFO_ALPN = b"/peerix/narinfo/1"
NAR_ALPN = b"/peerix/nar/1"
LOG_ALPN = b"/peerix/log/1"
REALISATION_ALPN = b"/peerix/realisation/1"
SUMMARY_ALPN = b"/peerix/summary/1"
ZSTD_BLOCKS = "zstd-blocks"

MAX_FRAME = 1 << 20  # a narinfo with thousands of references still fits
_LENGTH = struct.Struct(">I")


class WireError(Exception):
    """The other side broke the protocol: a bad frame, a bad field, or a stream cut short."""


class Readable(Protocol):
    async def read_exact(self, size: int) -> bytes: ...


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


async def read_frame(stream: Readable) -> dict[str, Any]:
    (size,) = _LENGTH.unpack(await stream.read_exact(_LENGTH.size))
    if size > MAX_FRAME:
        raise WireError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        message = json.loads(await stream.read_exact(size))
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, or nested past the parser's depth
        raise WireError(f"frame is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise WireError("frame is not a JSON object")
    return message


@dataclass(frozen=True)
class NarRequest:
    hash_part: str
    nar_hash: str  # nix32
    offset: int = 0
    length: int | None = None  # None: to the end
    zstd: str | None = None  # "prefer", "accept" or None
    growing: bool = True  # a NAR the peer is still pulling through will do (it sends bytes as they come)
    name: str | None = None  # the asking host's name, for the sender's dashboard (older peers send none)
    http: bool = False  # the bytes may come over the fast path

    def to_frame(self) -> bytes:
        message = {"hash": self.hash_part, "nar_hash": self.nar_hash, "offset": self.offset, "length": self.length}
        return encode_frame(message | ({"zstd": self.zstd} if self.zstd else {})
                            | ({} if self.growing else {"growing": False}) | ({"name": self.name} if self.name else {})
                            | ({"http": True} if self.http else {}))

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "NarRequest":
        hash_part, nar_hash = message.get("hash"), message.get("nar_hash")
        offset, length = message.get("offset", 0), message.get("length")
        if not isinstance(hash_part, str) or not isinstance(nar_hash, str):
            raise WireError("nar request needs string fields hash and nar_hash")
        if not _is_count(offset) or not (length is None or _is_count(length)):
            raise WireError("nar request offset and length must be non-negative integers")
        zstd, name = message.get("zstd"), message.get("name")
        return cls(hash_part, nar_hash, offset, length, zstd if zstd in ("prefer", "accept") else None,
                   message.get("growing") is not False, name if _is_name(name) else None, message.get("http") is True)


def _is_name(value: object) -> bool:
    """A host's name as the tracker takes it: 1 to 64 printable characters (anything else is ignored)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
