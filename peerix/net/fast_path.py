"""The fast path: a nearby peer's NAR bytes over plain HTTP, where iroh's Python binding would cap them.

iroh costs 10-13 CPU-seconds per GiB through its Python binding; a kernel TCP socket with sendfile on
the sender and large reads here moves the same bytes at a fraction of that. Only the bytes take this
path: the peer is asked over iroh as always (authenticated, admitted, under its serving policy), and
answers with an offer, the TCP port of its fast-path listener and a ticket, instead of the bytes. The
ticket is what lets the HTTP route, which cannot tell who connects, serve exactly the peers the iroh
side would, and know which one it serves: the asking peer's id and an expiry, with an HMAC over them
and the path's hash under a key that never leaves the process.

Bytes sent this way travel unencrypted, so they are only fetched from addresses that are on this
machine or a private network (never across the internet), and the receiver checks them against the
NarHash as it checks bytes that came over iroh.
"""

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import time
from collections.abc import Iterable

TICKET_HEADER = "x-peerix-ticket"
TICKET_TTL = 300.0  # seconds a ticket opens requests for (a request begun in time runs to its end)
READ_SIZE = 240 << 10  # under the mmap threshold (common/memory.py): chunks stay in the heap and the cache
MAX_HEAD = 16 << 10
BROKEN_FOR = 60.0  # seconds a peer whose fast path failed is asked over iroh only

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


class FastPathError(Exception):
    """The fast path could not be opened, or broke: the bytes still come, over iroh."""


class Tickets:
    """Tickets for one process's fast-path listener (on `port`, once it listens): issued over iroh to
    a peer it authenticated, checked by the HTTP route, which learns from it which peer asks."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._key = secrets.token_bytes(32)

    def offer(self, hash_part: str, peer_id: str) -> dict[str, object]:
        """What a NAR answer over iroh carries instead of the bytes."""
        return {"port": self.port, "ticket": self.issue(hash_part, peer_id)}

    def issue(self, hash_part: str, peer_id: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + TICKET_TTL)
        return f"{expiry}.{peer_id}.{self._mac(hash_part, peer_id, expiry)}"

    def holder(self, ticket: str, hash_part: str, now: float | None = None) -> str | None:
        """The peer the ticket was issued to, if it is valid for the path and has not expired."""
        expiry, _, rest = ticket.partition(".")
        peer_id, _, mac = rest.partition(".")
        if not expiry.isdigit() or len(expiry) > 12 or int(expiry) < (time.time() if now is None else now):
            return None
        return peer_id if hmac.compare_digest(mac, self._mac(hash_part, peer_id, int(expiry))) else None

    def _mac(self, hash_part: str, peer_id: str, expiry: int) -> str:
        return hmac.new(self._key, f"{hash_part}:{peer_id}:{expiry}".encode(), hashlib.sha256).hexdigest()


def is_nearby(address: str) -> bool:
    """Whether HOST:PORT is on this machine or a private network (the link is likely fast)."""
    ip = _ip(address)
    return ip is not None and (ip.is_loopback or ip.is_private or ip.is_link_local)


def nearby_hosts(addresses: Iterable[str]) -> list[str]:
    """The hosts of `addresses` (HOST:PORT) on this machine or a private network, in order, once each:
    where the fast path may go (not IPv6 link-local ones, which need an interface's scope)."""
    hosts: dict[str, None] = {}
    for address in addresses:
        if is_nearby(address) and not ((ip := _ip(address)).version == 6 and ip.is_link_local):
            hosts[str(ip)] = None
    return list(hosts)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return None


class FastPath:
    """This host's side as a receiver: which peers' fast paths work, and opening them."""

    def __init__(self, connect_timeout: float = 1.0) -> None:
        self.connect_timeout = connect_timeout
        self._broken: dict[str, float] = {}  # peer id -> until when its fast path is not tried

    def usable(self, peer_id: str) -> bool:
        until = self._broken.get(peer_id)
        return until is None or until < time.monotonic()

    def broke(self, peer_id: str) -> None:
        self._broken[peer_id] = time.monotonic() + BROKEN_FOR

    async def open(self, hosts: Iterable[str], port: int, ticket: str, nar_url: str, start: int, end: int
                   ) -> "HttpBody":
        """Bytes [start, end) of the NAR at `nar_url` (path and query) from the first of `hosts` that
        takes a connection on `port`; raises FastPathError when none does or the answer is wrong."""
        errors = []
        for host in hosts:
            try:
                sock = await self._connect(host, port)
            except OSError as error:
                errors.append(f"{host}:{port}: {error.strerror or error}")
                continue
            body = HttpBody(sock, start, end)
            try:
                await body.request(host, port, nar_url, ticket)
            except BaseException:
                body.close()
                raise
            return body
        raise FastPathError("; ".join(errors) or "no address to reach it by")

    async def _connect(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except TimeoutError:
            sock.close()
            raise OSError(f"no connection within {self.connect_timeout:g} s") from None
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class HttpBody:
    """One GET of a byte range, read straight from the socket in chunks of whatever has arrived (up to
    4 MiB): a few large reads where a stream reader would make many small ones. Reads like an iroh
    RecvStream (`read`, `stop`), so a transfer treats both alike."""

    def __init__(self, sock: socket.socket, start: int, end: int) -> None:
        self._sock = sock
        self._start, self._end = start, end
        self._left = end - start
        self._pending = b""  # body bytes that came with the head
        self._buffer = bytearray(READ_SIZE)

    async def request(self, host: str, port: int, nar_url: str, ticket: str) -> None:
        loop = asyncio.get_running_loop()
        name = f"[{host}]" if ":" in host else host
        head = (f"GET {nar_url} HTTP/1.1\r\nHost: {name}:{port}\r\n{TICKET_HEADER}: {ticket}\r\n"
                f"Range: bytes={self._start}-{self._end - 1}\r\nConnection: close\r\n\r\n").encode()
        try:
            await loop.sock_sendall(self._sock, head)
            received = b""
            while b"\r\n\r\n" not in received:
                if len(received) > MAX_HEAD:
                    raise FastPathError("the answer's head is too long")
                more = await loop.sock_recv(self._sock, 65536)
                if not more:
                    raise FastPathError("the connection closed before the answer")
                received += more
        except OSError as error:
            raise FastPathError(f"{host}:{port}: {error.strerror or error}") from None
        head, _, self._pending = received.partition(b"\r\n\r\n")
        self._check(head)

    def _check(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = _STATUS.match(lines[0])
        if status is None:
            raise FastPathError(f"not an HTTP answer: {lines[0][:80]!r}")
        if status[1] != b"206":
            raise FastPathError(f"HTTP {status[1].decode()}, not 206 (the range)")
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
        if fields.get(b"content-length") != b"%d" % self._left:
            raise FastPathError(f"announced {fields.get(b'content-length')!r} bytes, not {self._left}")
        if not fields.get(b"content-range", b"").startswith(b"bytes %d-%d/" % (self._start, self._end - 1)):
            raise FastPathError(f"sent range {fields.get(b'content-range')!r}, not {self._start}-{self._end - 1}")
        if len(self._pending) > self._left:
            raise FastPathError("more bytes than announced")

    async def read(self, limit: int = READ_SIZE) -> bytes:
        """The next bytes, at most `limit`; b"" at the end of the range. Raises FastPathError when the
        connection breaks."""
        if self._pending:
            chunk, self._pending = self._pending[:limit], self._pending[limit:]
            self._left -= len(chunk)
            return chunk
        wanted = min(limit, READ_SIZE, self._left)
        if not wanted:
            return b""
        view = memoryview(self._buffer)
        try:
            got = await asyncio.get_running_loop().sock_recv_into(self._sock, view[:wanted])
            while got and got < wanted:  # and whatever else has arrived meanwhile, without waiting
                try:
                    more = self._sock.recv_into(view[got:wanted])
                except BlockingIOError:
                    break
                if not more:
                    break
                got += more
        except OSError as error:
            raise FastPathError(f"{error.strerror or error} with {self._left} bytes to go") from None
        if not got:
            raise FastPathError(f"the connection closed with {self._left} bytes to go")
        self._left -= got
        return bytes(view[:got])

    async def stop(self, code: int = 0) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
