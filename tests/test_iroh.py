"""The iroh layer with real endpoints on loopback: the write fix, pooling, timeouts, the wire format."""

import asyncio
import os
import time

import iroh
import pytest
from iroh import iroh_ffi

from peerix.net import iroh_patch, wire
from peerix.net.endpoint import EndpointAddress, EndpointSettings, PeerEndpoint, PeerUnreachable

OFFLINE = EndpointSettings(bind="127.0.0.1:0", relays=False, discovery=False, connect_timeout=1.0)
ECHO = b"/peerix-test/echo/1"


async def echo(peer_id: str, stream: iroh.BiStream) -> None:
    request = await wire.read_frame(stream.recv())
    payload = os.urandom(request["size"]) if "size" in request else b""
    send = stream.send()
    await send.write_all(wire.encode_frame({"peer": peer_id, "size": len(payload)}))
    await send.write_all(payload)
    await send.finish()
    await send.stopped()


@pytest.fixture
async def pair():
    server = await PeerEndpoint.start(os.urandom(32), OFFLINE, {ECHO: echo})
    client = await PeerEndpoint.start(os.urandom(32), OFFLINE, {})
    yield server, client
    await client.close()
    await server.close()


async def request(client: PeerEndpoint, address: EndpointAddress, message: dict) -> tuple[dict, bytes]:
    stream = await client.open_stream(address, ECHO)
    await stream.send().write_all(wire.encode_frame(message))
    await stream.send().finish()
    reply = await wire.read_frame(stream.recv())
    return reply, await stream.recv().read_to_end(64 << 20)


def test_patch_targets_only_the_slow_writer() -> None:
    assert iroh_patch.install()
    assert not iroh_patch.is_slow(iroh_ffi._UniffiRustBufferBuilder.write)
    assert iroh_patch.is_slow(lambda self, value: [b for i, b in enumerate(value)])
    assert not iroh_patch.is_slow(iroh_patch._write)


async def test_patched_writes_carry_bytes_intact(pair) -> None:
    server, client = pair
    for size in (0, 1, 4095, 3 << 20):
        reply, payload = await request(client, server.address(), {"size": size})
        assert reply == {"peer": client.peer_id, "size": size} and len(payload) == size
    # Identity: the endpoint id is the ed25519 public key of the seed (what the tracker checks).
    import nacl.signing
    seed = os.urandom(32)
    endpoint = await PeerEndpoint.start(seed, OFFLINE, {})
    assert endpoint.peer_id == bytes(nacl.signing.SigningKey(seed).verify_key).hex()
    await endpoint.close()


async def test_streams_share_one_pooled_connection(pair) -> None:
    server, client = pair
    replies = await asyncio.gather(*(request(client, server.address(), {}) for _ in range(50)))
    assert all(reply["peer"] == client.peer_id for reply, _ in replies)
    assert len(client._pool.connections) == 1
    client.forget(server.peer_id)
    assert not client._pool.connections
    assert (await request(client, server.address(), {}))[0]["peer"] == client.peer_id


async def test_dead_and_wrong_peers_fail_within_the_timeout(pair) -> None:
    server, client = pair
    dead = EndpointAddress(str(iroh.SecretKey.generate().public()), ("127.0.0.1:9",))
    started = time.monotonic()
    with pytest.raises(PeerUnreachable, match="no connection within 1 s"):
        await client.open_stream(dead, ECHO)
    assert time.monotonic() - started < 1.5
    with pytest.raises(PeerUnreachable):
        await client.open_stream(server.address(), b"/peerix-test/unknown/1")
    impostor = EndpointAddress(str(iroh.SecretKey.generate().public()), server.address().direct)
    with pytest.raises(PeerUnreachable):  # right address, wrong key: the TLS handshake fails
        await client.open_stream(impostor, ECHO)


async def test_a_cancelled_caller_leaves_a_shared_dial_to_the_others(pair) -> None:
    """Two requests to the same peer share one dial; cancelling the first (a lost race, a stalled
    transfer) must not cancel the second's: it gets the dial's own outcome."""
    _, client = pair
    dead = EndpointAddress(str(iroh.SecretKey.generate().public()), ("127.0.0.1:9",))
    first = asyncio.create_task(client.open_stream(dead, ECHO))
    second = asyncio.create_task(client.open_stream(dead, ECHO))
    await asyncio.sleep(0.2)
    first.cancel()
    with pytest.raises(PeerUnreachable):
        await second
    assert first.cancelled()


class Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read_exact(self, size: int) -> bytes:
        if size > len(self.data):
            raise EOFError
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


async def test_wire_frames() -> None:
    request = wire.NarRequest("0" * 32, "1" * 52, 10, None)
    assert wire.NarRequest.from_message(await wire.read_frame(Bytes(request.to_frame()))) == request
    nested = b"[" * 200_000  # deeper than the JSON parser's recursion limit
    deep = len(nested).to_bytes(4, "big") + nested
    for bad in (b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x03{x}", b"\xff\xff\xff\xff{}", deep):
        with pytest.raises(wire.WireError):
            await wire.read_frame(Bytes(bad))
    for message in ({"hash": 1, "nar_hash": "x"}, {"hash": "x", "nar_hash": "y", "offset": -1},
                    {"hash": "x", "nar_hash": "y", "length": True}):
        with pytest.raises(wire.WireError):
            wire.NarRequest.from_message(message)
    with pytest.raises(wire.WireError):
        wire.encode_frame({"x": "y" * wire.MAX_FRAME})
