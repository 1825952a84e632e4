"""The daemon's iroh endpoint: its identity, the ALPNs it serves, and pooled connections to peers.

iroh facts this module respects (see design.md): callbacks need `uniffi_set_event_loop` first;
returning from a protocol handler's `accept` closes the connection, so it serves streams until
the peer closes; connecting to a dead address takes ~30 s, so every connect has a timeout; every
endpoint is closed before the event loop ends.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import iroh
from iroh import iroh_ffi

from . import iroh_patch

log = logging.getLogger(__name__)

# (peer id, the stream's two halves) -> None; runs once per stream a peer opens.
StreamHandler = Callable[[str, iroh.BiStream], Awaitable[None]]


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


@dataclass
class _Pool:
    connections: dict[tuple[str, bytes], iroh.Connection] = field(default_factory=dict)
    dialing: dict[tuple[str, bytes], asyncio.Task] = field(default_factory=dict)


class PeerEndpoint:
    def __init__(self, endpoint: iroh.Endpoint, settings: EndpointSettings) -> None:
        self._endpoint = endpoint
        self.settings = settings
        self.peer_id = str(endpoint.id())
        self._pool = _Pool()

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
        options = iroh.EndpointOptions(
            preset=preset,
            relay_mode=iroh.RelayMode.default_mode() if settings.relays else iroh.RelayMode.disabled(),
            bind_addr=settings.bind,
            secret_key=secret,
            protocols={alpn: _Creator(handler, settings) for alpn, handler in handlers.items()},
        )
        try:
            endpoint = await iroh.Endpoint.bind(options)
        except iroh.IrohError as error:
            cause = error.message().strip().splitlines()[-1].strip()  # the OS's reason, after iroh's context
            raise BindError(f"cannot listen for peers on UDP {settings.bind}: {cause}") from None
        log.info("iroh endpoint id=%s sockets=%s relays=%s discovery=%s", endpoint.id(),
                 ",".join(endpoint.bound_sockets()), settings.relays, settings.discovery)
        return cls(endpoint, settings)

    def address(self) -> EndpointAddress:
        addr = self._endpoint.addr()
        direct = tuple(addr.direct_addresses()) or tuple(
            s for s in self._endpoint.bound_sockets() if not s.startswith(("0.0.0.0:", "[::]:"))
        )
        return EndpointAddress(self.peer_id, direct, addr.relay_url())

    async def open_stream(self, peer: EndpointAddress, alpn: bytes) -> iroh.BiStream:
        """A new stream to `peer` on a pooled connection; one redial if the pooled one is dead."""
        for attempt in range(2):
            connection = await self._connection(peer, alpn)
            try:
                return await connection.open_bi()
            except iroh.IrohError as error:
                self._drop(peer.endpoint_id, alpn, connection)
                if attempt:
                    raise PeerUnreachable(f"{peer.endpoint_id[:10]}: {error.message()}") from None
        raise AssertionError("unreachable")

    async def _connection(self, peer: EndpointAddress, alpn: bytes) -> iroh.Connection:
        key = (peer.endpoint_id, alpn)
        connection = self._pool.connections.get(key)
        if connection is not None and connection.close_reason() is None:
            return connection
        # One dial per peer and ALPN, owned by the pool: a caller that is cancelled (a lost race, a
        # stalled transfer) leaves it running for the others instead of cancelling it under them.
        dialing = self._pool.dialing.get(key)
        if dialing is None:
            dialing = self._pool.dialing[key] = asyncio.create_task(self._dial(peer, alpn))
            dialing.add_done_callback(lambda task: self._dialed(key, task))
        return await asyncio.shield(dialing)

    def _dialed(self, key: tuple[str, bytes], task: asyncio.Task) -> None:
        del self._pool.dialing[key]
        if not task.cancelled() and task.exception() is None:
            self._pool.connections[key] = task.result()

    async def _dial(self, peer: EndpointAddress, alpn: bytes) -> iroh.Connection:
        try:
            target = iroh.EndpointAddr(iroh.EndpointId.from_string(peer.endpoint_id), peer.relay_url, list(peer.direct))
        except iroh.IrohError as error:
            raise PeerUnreachable(f"bad address for {peer.endpoint_id[:10]}: {error.message()}") from None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                return await self._endpoint.connect(target, alpn)
        except TimeoutError:
            raise PeerUnreachable(f"{peer.endpoint_id[:10]}: no connection within "
                                  f"{self.settings.connect_timeout:g} s") from None
        except iroh.IrohError as error:
            raise PeerUnreachable(f"{peer.endpoint_id[:10]}: {error.message()}") from None

    def _drop(self, peer_id: str, alpn: bytes, connection: iroh.Connection) -> None:
        if self._pool.connections.get((peer_id, alpn)) is connection:
            del self._pool.connections[(peer_id, alpn)]
        with contextlib.suppress(iroh.IrohError):
            connection.close(0, b"dropped")

    def forget(self, peer_id: str) -> None:
        """Close pooled connections to a peer that misbehaved or went away."""
        for (pid, alpn), connection in list(self._pool.connections.items()):
            if pid == peer_id:
                self._drop(pid, alpn, connection)

    async def close(self) -> None:
        for dialing in list(self._pool.dialing.values()):
            dialing.cancel()
        for (pid, alpn), connection in list(self._pool.connections.items()):
            self._drop(pid, alpn, connection)
        await self._endpoint.close()


class _Creator(iroh.ProtocolCreator):
    def __init__(self, handler: StreamHandler, settings: EndpointSettings) -> None:
        self.handler = handler
        self.settings = settings

    def create(self, endpoint: iroh.Endpoint) -> iroh.ProtocolHandler:
        return _Protocol(self.handler, self.settings)


class _Protocol(iroh.ProtocolHandler):
    def __init__(self, handler: StreamHandler, settings: EndpointSettings) -> None:
        self.handler = handler
        self.settings = settings

    async def accept(self, conn: iroh.Connection) -> None:
        """Serve every stream the peer opens; returning would close the connection."""
        peer_id = str(conn.remote_id())
        conn.set_max_concurrent_bi_streams(self.settings.max_streams_per_peer)
        tasks: set[asyncio.Task] = set()
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
