"""The daemon's iroh endpoint: its identity, the ALPNs it serves, and pooled connections to peers.

iroh facts this module respects (see design.md): callbacks need `uniffi_set_event_loop` first;
returning from a protocol handler's `accept` closes the connection, so it serves streams until
the peer closes; connecting to a dead address takes ~30 s, so every connect has a timeout; every
endpoint is closed before the event loop ends. QUIC resends its first handshake packet only after
1 s, then 3 s: a dial begun while a peer was restarting would reach it seconds after it is back,
so a dial starts its handshake afresh after REDIAL, then after twice as long, until connect_timeout.

A pooled connection can outlive the process at its other end: a peer killed or restarted on the
same port sends nothing back, not even a reset, and iroh keeps the connection until its idle
timeout. A live peer's QUIC stack acknowledges anything we send within milliseconds, however busy
the peer's Python is, so a connection that hears not one packet soon after we sent something is
dead: a request on it goes out again on a fresh connection at once, and the peer's other
connections are probed (an empty datagram) and dropped if silent too. Each process also has a
random incarnation, announced with its addresses; news of a new one probes the peer's pooled
connections the same way, before anyone waits on them. A connection made since the restart answers
the probe and is kept, however late the news.
"""

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import iroh
from iroh import iroh_ffi

from . import iroh_patch

log = logging.getLogger(__name__)

# (peer id, the stream's two halves) -> None; runs once per stream a peer opens.
StreamHandler = Callable[[str, iroh.BiStream], Awaitable[None]]
T = TypeVar("T")

UNHEARD = 0.2  # seconds without a packet, after we sent something, before a connection is presumed dead...
UNHEARD_RTTS = 4  # ...or this many round trips, on a slower path
REDIAL = 0.5  # a dial starts its handshake afresh after this, then after twice as long, and so on


class PeerUnreachable(Exception):
    """No connection to the peer within the timeout, or the connection broke."""


class BindError(Exception):
    """The endpoint cannot listen on the address it was given (taken, not this host's, malformed)."""


@dataclass(frozen=True)
class EndpointSettings:
    bind: str = "0.0.0.0:0"
    relays: bool = True  # iroh's public relays: NAT traversal and a fallback path
    discovery: bool = True  # n0 DNS discovery of peers' current addresses by their id
    connect_timeout: float = 3.0
    max_streams_per_peer: int = 64


@dataclass(frozen=True)
class EndpointAddress:
    """Everything a peer needs to dial us: what the tracker and LAN announcements carry."""

    endpoint_id: str
    direct: tuple[str, ...] = ()
    relay_url: str | None = None
    incarnation: str | None = None  # random per process; None from peers that predate it


def another_process(old: EndpointAddress, new: EndpointAddress) -> bool:
    """Whether `new` comes from a later process than `old` (the peer restarted): another incarnation,
    or, from a peer that announces none, other addresses."""
    if old.incarnation and new.incarnation:
        return old.incarnation != new.incarnation
    return set(old.direct) != set(new.direct) or old.relay_url != new.relay_url


class _Unheard(Exception):
    """A pooled connection heard nothing after a request: its peer's process is gone."""


@dataclass
class _Pool:
    connections: dict[tuple[str, bytes], iroh.Connection] = field(default_factory=dict)
    dialing: dict[tuple[str, bytes], asyncio.Task] = field(default_factory=dict)
    probes: set[asyncio.Task] = field(default_factory=set)
    # peer id -> the connections it made to us -> the streams being served on each
    incoming: dict[str, dict[iroh.Connection, set[asyncio.Task]]] = field(default_factory=dict)


class PeerEndpoint:
    def __init__(self, endpoint: iroh.Endpoint, settings: EndpointSettings, pool: _Pool) -> None:
        self._endpoint = endpoint
        self.settings = settings
        self.peer_id = str(endpoint.id())
        self.incarnation = secrets.token_hex(8)
        self._pool = pool

    @classmethod
    async def start(
        cls, secret: bytes, settings: EndpointSettings, handlers: Mapping[bytes, StreamHandler]
    ) -> "PeerEndpoint":
        iroh_patch.install()
        iroh_ffi.uniffi_set_event_loop(asyncio.get_running_loop())
        if settings.discovery:
            preset = iroh.preset_n0() if settings.relays else iroh.preset_n0_disable_relay()
        else:
            preset = iroh.preset_minimal()
        pool = _Pool()  # shared with the protocol handlers, which keep the connections peers made to us
        options = iroh.EndpointOptions(
            preset=preset,
            relay_mode=iroh.RelayMode.default_mode() if settings.relays else iroh.RelayMode.disabled(),
            bind_addr=settings.bind,
            secret_key=secret,
            protocols={alpn: _Creator(handler, settings, pool) for alpn, handler in handlers.items()},
        )
        try:
            endpoint = await iroh.Endpoint.bind(options)
        except iroh.IrohError as error:
            cause = error.message().strip().splitlines()[-1].strip()  # the OS's reason, after iroh's context
            raise BindError(f"cannot listen for peers on UDP {settings.bind}: {cause}") from None
        log.info("iroh endpoint id=%s sockets=%s relays=%s discovery=%s", endpoint.id(),
                 ",".join(endpoint.bound_sockets()), settings.relays, settings.discovery)
        return cls(endpoint, settings, pool)

    def address(self) -> EndpointAddress:
        addr = self._endpoint.addr()
        direct = tuple(addr.direct_addresses()) or tuple(
            s for s in self._endpoint.bound_sockets() if not s.startswith(("0.0.0.0:", "[::]:"))
        )
        return EndpointAddress(self.peer_id, direct, addr.relay_url(), self.incarnation)

    async def request(self, peer: EndpointAddress, alpn: bytes, message: bytes,
                      answer: Callable[[iroh.RecvStream], Awaitable[T]]) -> tuple[iroh.BiStream, T]:
        """Send `message` on a new stream to `peer`; return the stream and `answer` of its reply.

        On a pooled connection that cannot open the stream, or hears nothing after the request (see
        the module's docstring), the request goes out once more on a fresh connection. Errors of
        the stream itself (the peer reset it) are the caller's. A cancelled request stops its stream.
        """
        for attempt in range(2):
            connection, pooled = await self._connection(peer, alpn)
            try:
                return await self._exchange(connection, message, answer, listen=pooled)
            except (iroh.IrohError, _Unheard) as error:
                if isinstance(error, iroh.IrohError) and connection.close_reason() is None:
                    raise  # the stream failed, not the connection
                self._drop(peer.endpoint_id, alpn, connection,
                           "unheard" if isinstance(error, _Unheard) else error.message().splitlines()[0])
                if isinstance(error, _Unheard):
                    self.check(peer.endpoint_id)  # the peer's process died: so did its other connections
                if attempt or not pooled:
                    raise PeerUnreachable(f"{peer.endpoint_id[:10]}: the connection broke") from None
        raise AssertionError("unreachable")

    async def _exchange(self, connection: iroh.Connection, message: bytes,
                        answer: Callable[[iroh.RecvStream], Awaitable[T]], listen: bool) -> tuple[iroh.BiStream, T]:
        """The request and its answer; with `listen`, raises _Unheard when the connection receives
        not one packet in the time a live peer takes to acknowledge the request."""
        heard = _heard(connection)
        exchange = asyncio.ensure_future(_send_and_answer(connection, message, answer))
        try:
            if listen:
                done, _ = await asyncio.wait({exchange}, timeout=_silence(connection))
                if not done and _heard(connection) == heard:
                    raise _Unheard()
            return await exchange
        finally:
            exchange.cancel()  # nothing when it is done; else it stops its stream
            await asyncio.gather(exchange, return_exceptions=True)

    async def _connection(self, peer: EndpointAddress, alpn: bytes) -> tuple[iroh.Connection, bool]:
        """A connection to `peer`, and whether it came from the pool (rather than a dial just now)."""
        key = (peer.endpoint_id, alpn)
        connection = self._pool.connections.get(key)
        if connection is not None and connection.close_reason() is None:
            return connection, True
        # One dial per peer and ALPN, owned by the pool: a caller that is cancelled (a lost race, a
        # stalled transfer) leaves it running for the others instead of cancelling it under them.
        dialing = self._pool.dialing.get(key)
        if dialing is None:
            dialing = self._pool.dialing[key] = asyncio.create_task(self._dial(peer, alpn))
            dialing.add_done_callback(lambda task: self._dialed(key, task))
        return await asyncio.shield(dialing), False

    def _dialed(self, key: tuple[str, bytes], task: asyncio.Task) -> None:
        del self._pool.dialing[key]
        if not task.cancelled() and task.exception() is None:
            self._pool.connections[key] = task.result()

    async def _dial(self, peer: EndpointAddress, alpn: bytes) -> iroh.Connection:
        try:
            target = iroh.EndpointAddr(iroh.EndpointId.from_string(peer.endpoint_id), peer.relay_url, list(peer.direct))
        except iroh.IrohError as error:
            raise PeerUnreachable(f"bad address for {peer.endpoint_id[:10]}: {error.message()}") from None
        loop = asyncio.get_running_loop()
        deadline, attempt = loop.time() + self.settings.connect_timeout, REDIAL
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(attempt, remaining)):
                    return await self._endpoint.connect(target, alpn)
            except TimeoutError:
                attempt *= 2
                self._close_incoming(peer.endpoint_id)
            except iroh.IrohError as error:
                raise PeerUnreachable(f"{peer.endpoint_id[:10]}: {error.message()}") from None
        raise PeerUnreachable(f"{peer.endpoint_id[:10]}: no connection within {self.settings.connect_timeout:g} s")

    def _drop(self, peer_id: str, alpn: bytes, connection: iroh.Connection, reason: str | None = None) -> None:
        if self._pool.connections.get((peer_id, alpn)) is connection:
            del self._pool.connections[(peer_id, alpn)]
        with contextlib.suppress(iroh.IrohError):
            connection.close(0, b"dropped")
        if reason:
            log.info("pooled connection dropped peer=%s alpn=%s reason=%s", peer_id[:10], alpn.decode(), reason)

    def _close_incoming(self, peer_id: str) -> None:
        """iroh 1.2 can wedge a restarted peer: when it connected to us while a connection to its old
        process was still pooled here, dials to it may go nowhere for minutes, until the connections
        it made to us close. A dial that sees no handshake within REDIAL closes those that are idle
        (the peer dials again when it next needs us) so that the next try gets through."""
        idle = [connection for connection, streams in self._pool.incoming.get(peer_id, {}).items() if not streams]
        for connection in idle:
            with contextlib.suppress(iroh.IrohError):
                connection.close(0, b"redial")
        if idle:
            log.info("closed the peer's idle connections to us so that a dial to it gets through peer=%s "
                     "connections=%d", peer_id[:10], len(idle))

    def direct_host(self, peer_id: str, alpn: bytes) -> str | None:
        """The IP address of the direct path the pooled connection to the peer uses now, if any: an
        address QUIC has proven to be the peer's, unlike the addresses it announces."""
        connection = self._pool.connections.get((peer_id, alpn))
        try:
            selected = next((p for p in connection.paths() if p.is_selected and p.is_ip), None) if connection else None
        except iroh.IrohError:
            return None
        host = selected.remote_addr.rsplit(":", 1)[0].strip("[]") if selected else None
        try:
            return str(ipaddress.ip_address(host)) if host else None
        except ValueError:  # not an address iroh would give: no direct path to speak of
            return None

    def forget(self, peer_id: str) -> None:
        """Close pooled connections to a peer that misbehaved."""
        for (pid, alpn), connection in list(self._pool.connections.items()):
            if pid == peer_id:
                self._drop(pid, alpn, connection)

    def check(self, peer_id: str) -> None:
        """Probe the peer's pooled connections and drop those that hear nothing (see the module's
        docstring): on news of a new process of the peer, or when one of them was found dead."""
        for (pid, alpn), connection in list(self._pool.connections.items()):
            if pid == peer_id:
                probe = asyncio.ensure_future(self._probe(pid, alpn, connection))
                self._pool.probes.add(probe)
                probe.add_done_callback(self._pool.probes.discard)

    async def _probe(self, peer_id: str, alpn: bytes, connection: iroh.Connection) -> None:
        heard = _heard(connection)
        try:
            connection.send_datagram(b"")  # ack-eliciting, and ignored by the peer's application
        except iroh.IrohError:
            return  # the connection closed meanwhile, or the peer takes no datagrams: requests will tell
        await asyncio.sleep(_silence(connection))
        if _heard(connection) == heard:
            self._drop(peer_id, alpn, connection, "unheard when probed")

    async def close(self) -> None:
        for task in [*self._pool.dialing.values(), *self._pool.probes]:
            task.cancel()
        for (pid, alpn), connection in list(self._pool.connections.items()):
            self._drop(pid, alpn, connection)
        await self._endpoint.close()


def _heard(connection: iroh.Connection) -> int:
    return connection.stats().udp_rx_datagrams


def _silence(connection: iroh.Connection) -> float:
    """How long a live peer may take to acknowledge what we sent."""
    return max(UNHEARD, UNHEARD_RTTS * (connection.rtt() or 0) / 1000)


async def _send_and_answer(connection: iroh.Connection, message: bytes,
                           answer: Callable[[iroh.RecvStream], Awaitable[T]]) -> tuple[iroh.BiStream, T]:
    stream = await connection.open_bi()
    try:
        await stream.send().write_all(message)
        await stream.send().finish()
        return stream, await answer(stream.recv())
    except asyncio.CancelledError:
        with contextlib.suppress(iroh.IrohError):
            await stream.recv().stop(0)  # the peer may already be sending: it stops at once
        raise


class _Creator(iroh.ProtocolCreator):
    def __init__(self, handler: StreamHandler, settings: EndpointSettings, pool: _Pool) -> None:
        self.handler = handler
        self.settings = settings
        self.pool = pool

    def create(self, endpoint: iroh.Endpoint) -> iroh.ProtocolHandler:
        return _Protocol(self.handler, self.settings, self.pool)


class _Protocol(iroh.ProtocolHandler):
    def __init__(self, handler: StreamHandler, settings: EndpointSettings, pool: _Pool) -> None:
        self.handler = handler
        self.settings = settings
        self.pool = pool

    async def accept(self, conn: iroh.Connection) -> None:
        """Serve every stream the peer opens; returning would close the connection."""
        peer_id = str(conn.remote_id())
        conn.set_max_concurrent_bi_streams(self.settings.max_streams_per_peer)
        tasks: set[asyncio.Task] = set()
        incoming = self.pool.incoming.setdefault(peer_id, {})
        incoming[conn] = tasks
        try:
            while True:
                try:
                    stream = await conn.accept_bi()
                except iroh.IrohError:
                    break  # the peer closed the connection, or it timed out idle
                task = asyncio.create_task(self._serve(peer_id, stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            incoming.pop(conn, None)
            if not incoming and self.pool.incoming.get(peer_id) is incoming:
                del self.pool.incoming[peer_id]
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, peer_id: str, stream: iroh.BiStream) -> None:
        try:
            await self.handler(peer_id, stream)
        except Exception as error:  # one broken stream must not end the connection
            log.warning("peer stream failed peer=%s error=%s", peer_id[:10], _describe(error))

    async def shutdown(self) -> None:
        pass


def _describe(error: BaseException) -> str:
    return error.message() if isinstance(error, iroh.IrohError) else f"{type(error).__name__}: {error}"
