"""LAN discovery: peers on the same network, or listed by address, find each other without a tracker.

Every host sends a signed announcement (its endpoint id, name and iroh addresses) every
`interval` seconds to a multicast group, to the subnet broadcast address (Wi-Fi access points
often drop multicast between wireless and wired hosts) and to each static peer (VPNs carry
neither). A starting host asks for answers, and anyone hearing a new peer answers it at once by
unicast, so discovery takes one round trip, not one interval. Peers that fall silent expire. A
known peer announcing another process (a new incarnation, or other addresses) is reported at once:
connections to its old process are dead.

Packets: the magic `PXL1`, a JSON body, and a 64-byte ed25519 signature of magic and body by the
key whose public half is the endpoint id. Oversized, malformed, unsigned, badly signed, stale or
replayed packets are dropped and counted by reason. The body's optional `inc` (the sender's
incarnation) is a field of version 1: older peers ignore it, and its absence means "unknown".

A host with a fleet token sends `PXF1` packets instead: the same magic-body-signature, then the
32-byte HMAC-SHA256 of everything before it under the token. The signature proves which key sent
the packet; the HMAC proves the sender holds the fleet's token. Where the token is required (a
fleet that has one), a packet without the proof is dropped as `unproven`, one with a wrong proof
as `wrong-token`; the HMAC is checked before the signature, as it is the cheaper of the two. A host
without the token still reads the signed announcement of a `PXF1` packet.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..nix.storepath import is_hash_part
from .endpoint import EndpointAddress, another_process

log = logging.getLogger(__name__)

MAGIC = b"PXL1"
FLEET_MAGIC = b"PXF1"  # followed by the same body and signature, then the fleet token's proof
MAX_PACKET = 1400  # one unfragmented datagram on any LAN
SIGNATURE_SIZE = 64
MAX_PULLING = 16  # leases a packet carries: 16 hash parts fit beside everything else in one datagram
PROOF_SIZE = 32
MAX_INCARNATION = 64


class PacketError(ValueError):
    """Why a packet was dropped; the first word is the reason counted in metrics."""


class LanError(Exception):
    """LAN discovery cannot start: no such interface, or its port cannot be bound."""


@dataclass(frozen=True)
class Announcement:
    address: EndpointAddress
    name: str
    sent_at: float  # sender's clock, strictly increasing per sender: the replay guard
    wants_answer: bool = False
    pulling: tuple[str, ...] = ()  # hash parts it is fetching from the upstream for the LAN: its leases
    summary: int | None = None  # the generation of its store summary (swarm/summaries.py), if it has one

    @property
    def peer_id(self) -> str:
        return self.address.endpoint_id


def encode(announcement: Announcement, key: nacl.signing.SigningKey, fleet_token: bytes | None = None) -> bytes:
    """The signed packet; with a fleet token, a `PXF1` packet that proves it too."""
    magic = MAGIC if fleet_token is None else FLEET_MAGIC
    body = json.dumps({
        "v": 1, "id": announcement.peer_id, "name": announcement.name, "direct": list(announcement.address.direct),
        "relay": announcement.address.relay_url, "t": announcement.sent_at, "ask": announcement.wants_answer,
        "inc": announcement.address.incarnation,
        **({"pull": list(announcement.pulling)} if announcement.pulling else {}),
        **({"sum": announcement.summary} if announcement.summary is not None else {}),
    }, separators=(",", ":")).encode()
    packet = magic + body + key.sign(magic + body).signature
    if fleet_token is not None:
        packet += _proof(fleet_token, packet)
    if len(packet) > MAX_PACKET:
        raise PacketError(f"oversized: announcement of {len(packet)} bytes")
    return packet


def decode(packet: bytes, now: float, max_skew: float, fleet_tokens: Sequence[bytes] = (),
           require_proof: bool = False) -> Announcement:
    """Check and parse a packet; raises PacketError naming the reason it is dropped. A `PXF1` packet's
    proof is checked against `fleet_tokens` (any of them: a rotation lists the new one beside the old)
    when there are any; `require_proof` drops packets without one."""
    if len(packet) > MAX_PACKET:
        raise PacketError(f"oversized: {len(packet)} bytes")
    proven = packet.startswith(FLEET_MAGIC)
    if not (proven or packet.startswith(MAGIC)) or len(packet) < len(MAGIC) + SIGNATURE_SIZE + 2 + proven * PROOF_SIZE:
        raise PacketError("malformed: not a peerix LAN packet")
    if proven:
        packet, proof = packet[:-PROOF_SIZE], packet[-PROOF_SIZE:]
        if fleet_tokens and not any(hmac.compare_digest(proof, _proof(token, packet)) for token in fleet_tokens):
            raise PacketError("wrong-token: the fleet token's proof does not match")
    elif require_proof:
        raise PacketError("unproven: no proof of the fleet token")
    signed, signature = packet[:-SIGNATURE_SIZE], packet[-SIGNATURE_SIZE:]
    try:
        body = json.loads(signed[len(MAGIC):])  # both magics have its length
        peer_id, name, direct, relay, sent_at, ask, incarnation, pulling, summary = (
            body["id"], body["name"], body["direct"], body.get("relay"), body["t"], body.get("ask", False),
            body.get("inc"), body.get("pull", []), body.get("sum"))
        key = nacl.signing.VerifyKey(bytes.fromhex(peer_id))
    except (ValueError, KeyError, TypeError, nacl.exceptions.CryptoError) as error:
        raise PacketError(f"malformed: {error}") from None
    if body.get("v") != 1:
        raise PacketError(f"malformed: unknown version {body.get('v')!r}")
    try:
        key.verify(signed, signature)
    except nacl.exceptions.BadSignatureError:
        raise PacketError(f"unsigned: bad signature for {peer_id[:10]}") from None
    if not (isinstance(name, str) and isinstance(direct, list) and all(isinstance(a, str) for a in direct)
            and isinstance(sent_at, int | float) and (relay is None or isinstance(relay, str))
            and (incarnation is None or isinstance(incarnation, str) and 0 < len(incarnation) <= MAX_INCARNATION)
            and isinstance(pulling, list) and len(pulling) <= MAX_PULLING
            and all(isinstance(h, str) and is_hash_part(h) for h in pulling)
            and (summary is None or type(summary) is int and 0 <= summary < 1 << 64)):
        raise PacketError("malformed: wrong field types")
    if abs(now - sent_at) > max_skew:
        raise PacketError(f"stale: sent {now - sent_at:.0f} s from now")
    address = EndpointAddress(peer_id, tuple(direct), relay, incarnation)
    return Announcement(address, name[:64], float(sent_at), bool(ask), tuple(pulling), summary)


def _proof(token: bytes, packet: bytes) -> bytes:
    return hmac.new(token, packet, hashlib.sha256).digest()


@dataclass
class LanPeer:
    announcement: Announcement
    source: str  # "lan" or "static"
    seen: float  # our monotonic clock
    seen_wall: float
    sender: tuple[str, int]


@dataclass(frozen=True)
class LanSettings:
    port: int = 12304
    group: str = "239.255.77.77"
    interface: str | None = None  # default: the interface of the default route
    static_peers: tuple[str, ...] = ()  # HOST:PORT, for networks without broadcast (VPNs)
    broadcast: bool = True  # multicast and subnet broadcast; off: static peers only (unicast)
    interval: float = 10.0
    expiry: float = 35.0
    max_skew: float = 300.0
    fleet_tokens: tuple[bytes, ...] = ()  # the first is sent; any of them is accepted
    require_proof: bool = False  # drop packets that do not prove a fleet token


class LanDiscovery(asyncio.DatagramProtocol):
    def __init__(self, seed: bytes, settings: LanSettings, address: Callable[[], EndpointAddress], name: str,
                 on_drop: Callable[[str], None] = lambda reason: None,
                 on_restart: Callable[[EndpointAddress], None] = lambda address: None,
                 summary: Callable[[], int | None] = lambda: None,
                 on_summary: Callable[[EndpointAddress, int], None] = lambda address, generation: None) -> None:
        self.summary = summary  # the generation of our store summary, sent in every packet
        self.on_summary = on_summary  # a peer's packet named the generation of its summary
        self.key = nacl.signing.SigningKey(seed)
        self.peer_id = bytes(self.key.verify_key).hex()
        self.settings = settings
        self.address = address
        self.host_name = name
        self.on_drop = on_drop
        self.on_restart = on_restart  # a known peer announced another process
        self.peers: dict[str, LanPeer] = {}
        self.dropped: Counter[str] = Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._targets: list[tuple[str, int]] = []
        self._static: set[tuple[str, int]] = set()
        self._last_sent = 0.0
        self._task: asyncio.Task | None = None
        self.pulling: dict[str, None] = {}  # our leases, oldest first: sent in every announcement

    async def start(self) -> None:
        interface = pick_interface(self.settings.interface)
        try:
            sock = _socket(self.settings, interface)
        except OSError as error:
            raise LanError(f"LAN discovery cannot listen on UDP port {self.settings.port}: {error.strerror}") from None
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._targets = [(self.settings.group, self.settings.port)] if self.settings.broadcast else []
        if interface is not None and self.settings.broadcast:
            self._targets.append((str(interface.network.network.broadcast_address), self.settings.port))
        log.info("lan discovery port=%d interface=%s targets=%s static=%s", self.settings.port,
                 interface and interface.name, ",".join(f"{h}:{p}" for h, p in self._targets) or "-",
                 ",".join(self.settings.static_peers) or "-")
        self._task = asyncio.create_task(self._announce_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    async def _announce_forever(self) -> None:
        ask = True
        while True:
            self._static = set(await _resolve(self.settings.static_peers, self.settings.port))
            self._send(self._targets, ask)
            # A static peer is asked every time: it answers us alone, and need not list us to keep us from
            # forgetting it after `expiry` (its own announcements may never reach us).
            self._send(sorted(self._static), ask=True)
            ask = False
            self._expire()
            await asyncio.sleep(self.settings.interval)

    def _announcement(self, ask: bool) -> bytes:
        # Strictly increasing even when the clock is coarse: receivers drop anything not newer.
        self._last_sent = max(time.time(), self._last_sent + 1e-6)
        token = self.settings.fleet_tokens[0] if self.settings.fleet_tokens else None
        return encode(Announcement(self.address(), self.host_name, self._last_sent, ask,
                                   tuple(self.pulling)[-MAX_PULLING:], self.summary()), self.key, token)

    def announce(self) -> None:
        """Tell the LAN now, not at the next interval (our store summary changed)."""
        self._send(self._targets + sorted(self._static))

    def claim(self, hash_part: str) -> None:
        """Tell the LAN at once that this host fetches the path from the upstream (until `unclaim`)."""
        self.pulling[hash_part] = None
        self._send(self._targets + sorted(self._static))

    def unclaim(self, hash_part: str) -> None:
        if self.pulling.pop(hash_part, False) is None:
            self._send(self._targets + sorted(self._static))

    def _send(self, targets: Sequence[tuple[str, int]], ask: bool = False) -> None:
        if self._transport is None:
            return
        packet = self._announcement(ask)
        for target in targets:
            try:
                self._transport.sendto(packet, target)
            except OSError as error:  # no route, network down: try again next interval
                log.debug("lan send failed target=%s error=%s", target, error)

    def datagram_received(self, data: bytes, sender: tuple[str, int]) -> None:
        try:
            announcement = decode(data, time.time(), self.settings.max_skew, self.settings.fleet_tokens,
                                  self.settings.require_proof)
        except PacketError as error:
            return self._drop(str(error), sender)
        if announcement.peer_id == self.peer_id:
            return  # our own multicast or broadcast, looped back
        known = self.peers.get(announcement.peer_id)
        if known is not None and announcement.sent_at == known.announcement.sent_at:
            return  # the same packet by another route (multicast and broadcast both arrive)
        if known is not None and announcement.sent_at < known.announcement.sent_at:
            return self._drop(f"replayed: older than the last announcement of {announcement.peer_id[:10]}", sender)
        source = "static" if sender[:2] in self._static else "lan"
        self.peers[announcement.peer_id] = LanPeer(announcement, source, time.monotonic(), time.time(), sender[:2])
        if known is None:
            log.info("lan peer joined peer=%s name=%s source=%s from=%s:%d addresses=%s", announcement.peer_id[:10],
                     announcement.name, source, sender[0], sender[1], ",".join(announcement.address.direct))
        elif another_process(known.announcement.address, announcement.address):
            log.info("lan peer restarted peer=%s name=%s addresses=%s", announcement.peer_id[:10], announcement.name,
                     ",".join(announcement.address.direct))
            self.on_restart(announcement.address)
        if announcement.summary is not None:
            self.on_summary(announcement.address, announcement.summary)
        if known is None or announcement.wants_answer:
            self._send([sender[:2]])  # let a newcomer know us now, not in one interval

    def _drop(self, reason: str, sender: tuple[str, int]) -> None:
        kind = reason.split(":", 1)[0]
        self.dropped[kind] += 1
        self.on_drop(kind)
        log.debug("lan packet dropped from=%s reason=%s", sender[0], reason)

    def _expire(self) -> None:
        deadline = time.monotonic() - self.settings.expiry
        for peer_id, peer in list(self.peers.items()):
            if peer.seen < deadline:
                del self.peers[peer_id]
                log.info("lan peer expired peer=%s name=%s", peer_id[:10], peer.announcement.name)

    def live_peers(self) -> list[LanPeer]:
        """The peers heard from within `expiry`."""
        self._expire()
        return list(self.peers.values())


@dataclass(frozen=True)
class Interface:
    name: str
    network: ipaddress.IPv4Interface


def pick_interface(name: str | None) -> Interface | None:
    """The named interface, else the default route's, else the first up non-loopback one with IPv4."""
    names = [name] if name else [_default_route_interface(), *(n for _, n in sorted(socket.if_nameindex()))]
    for candidate in names:
        if candidate and candidate != "lo" and (network := _ipv4(candidate)) is not None:
            return Interface(candidate, network)
    if name:
        known = sorted(n for _, n in socket.if_nameindex())
        if name not in known:
            raise LanError(f"LAN discovery: there is no interface {name} (this host has {', '.join(known)})")
        raise LanError(f"LAN discovery: interface {name} has no IPv4 address")
    return None


def _default_route_interface() -> str | None:
    with contextlib.suppress(OSError), open("/proc/net/route") as routes:
        best = None
        for line in list(routes)[1:]:
            fields = line.split()
            if fields[1] == "00000000" and int(fields[3], 16) & 1:  # destination 0.0.0.0, route up
                metric = int(fields[6])
                if best is None or metric < best[0]:
                    best = (metric, fields[0])
        return best[1] if best else None
    return None


def _ipv4(name: str) -> ipaddress.IPv4Interface | None:
    SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24])
            netmask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, request)[20:24])
        except OSError:
            return None
    return ipaddress.IPv4Interface(f"{address}/{netmask}")


def _socket(settings: LanSettings, interface: Interface | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        sock.bind(("0.0.0.0", settings.port))
    except OSError:
        sock.close()
        raise
    local = socket.inet_aton(str(interface.network.ip)) if interface else socket.inet_aton("0.0.0.0")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
    try:
        if settings.broadcast:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(settings.group) + local)
    except OSError as error:  # no multicast route: broadcast and static peers still work
        log.warning("lan multicast unavailable group=%s error=%s", settings.group, error)
    sock.setblocking(False)
    return sock


async def _resolve(peers: Sequence[str], default_port: int) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    resolved = []
    for peer in peers:
        host, _, port = peer.rpartition(":") if ":" in peer else (peer, "", str(default_port))
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), int(port), family=socket.AF_INET, type=socket.SOCK_DGRAM)
        except (OSError, ValueError) as error:
            log.warning("static peer unresolved peer=%s error=%s", peer, error)
            continue
        resolved.append(infos[0][4][:2])
    return resolved
