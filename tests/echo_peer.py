"""An echoing iroh endpoint for tests, also as a process of its own that a test can SIGKILL and restart.

    python tests/echo_peer.py SEED_HEX PORT [ADDRESS_JSON]

prints its endpoint address as JSON once it listens on 127.0.0.1:PORT, then serves until killed.
Given another echo peer's address, it first asks it once (a peer that connects to us when it starts)
and prints `dialled`.
A request `{"size": n, "delay": s}` is answered after s seconds with `{"peer": <asker>, "size": n}`
and n random bytes.
"""

import asyncio
import json
import os
import sys

import iroh

from peerix.net import wire
from peerix.net.endpoint import EndpointAddress, EndpointSettings, PeerEndpoint

ECHO = b"/peerix-test/echo/1"


async def echo(peer_id: str, stream: iroh.BiStream) -> None:
    request = await wire.read_frame(stream.recv())
    await asyncio.sleep(request.get("delay", 0))
    payload = os.urandom(request["size"]) if "size" in request else b""
    send = stream.send()
    await send.write_all(wire.encode_frame({"peer": peer_id, "size": len(payload)}))
    await send.write_all(payload)
    await send.finish()
    await send.stopped()


async def main(seed: bytes, port: int, dial: str | None) -> None:
    settings = EndpointSettings(bind=f"127.0.0.1:{port}", relays=False, discovery=False)
    endpoint = await PeerEndpoint.start(seed, settings, {ECHO: echo})
    address = endpoint.address()
    print(json.dumps({"id": address.endpoint_id, "direct": list(address.direct)}), flush=True)
    if dial:
        other = json.loads(dial)
        await endpoint.request(EndpointAddress(other["id"], tuple(other["direct"])), ECHO, wire.encode_frame({}),
                               wire.read_frame)
        print("dialled", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(bytes.fromhex(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
