"""Zero-copy response bodies for uvicorn: the ASGI `http.response.zerocopysend` extension.

uvicorn does not offer this extension, so this protocol adds it to uvicorn's httptools protocol
with asyncio's native `loop.sendfile` (os.sendfile under the hood). Large files in a NAR then go
from the page cache to the socket without passing through Python, which is what lets a Python
server approach nginx. Apps must keep a fallback: the extension is advertised per request in
`scope["extensions"]`, and is absent under other servers.
"""

import asyncio
import functools
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ..common.asgi import ZEROCOPY


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every request, pipelined ones included, starts here with its own cycle.
        super()._start_asgi_task(cycle, functools.partial(_with_zerocopy, app, cycle))


async def _with_zerocopy(app: ASGIApp, cycle: RequestResponseCycle, scope: Scope, receive: Receive, send: Send) -> None:
    scope.setdefault("extensions", {})[ZEROCOPY] = {}
    loop = asyncio.get_running_loop()

    async def zerocopy_send(message: Message) -> None:
        if message["type"] != ZEROCOPY:
            return await send(message)
        if cycle.disconnected:
            raise ConnectionResetError("client went away")
        count = message["count"]
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        try:
            sent = await loop.sendfile(cycle.transport, message["file"], message.get("offset", 0), count)
        except OSError:
            cycle.disconnected = True  # the connection is broken; uvicorn will see it closed
            cycle.transport.close()
            raise
        cycle.expected_content_length -= sent
        if sent != count:
            raise OSError(f"file ended after {sent} of {count} bytes")
        if not message.get("more_body", False):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    await app(scope, receive, zerocopy_send)
