"""uvicorn's httptools protocol with two additions the daemon's hot routes need.

Zero-copy response bodies: the ASGI `http.response.zerocopysend` extension, which uvicorn does not
offer, with asyncio's native `loop.sendfile` (os.sendfile under the hood). Large files in a NAR then
go from the page cache to the socket without passing through Python, which is what lets a Python
server approach nginx. Apps must keep a fallback: the extension is advertised per request in
`scope["extensions"]`, and is absent under other servers.

Answers known at once: when the app has one for a request (`answer_at_once`, e.g. a narinfo already
looked up), it is written to the socket in one piece, without an ASGI task, its messages and the
middleware chain, which cost several times what the answer itself does.
"""

import asyncio
import functools
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from ..common.asgi import ZEROCOPY, Whole


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every request, pipelined ones included, starts here with its own cycle.
        at_once = getattr(app, "answer_at_once", None)
        if at_once and not cycle.access_log and not self.flow.write_paused and (answer := at_once(cycle.scope)):
            return _write(cycle, answer)
        super()._start_asgi_task(cycle, functools.partial(_with_zerocopy, app, cycle))


def _write(cycle: RequestResponseCycle, answer: Whole) -> None:
    """What uvicorn writes for the response's two ASGI messages, in one write."""
    out = [STATUS_LINE[answer.status]]
    for name, value in (*cycle.default_headers, *answer.headers):
        out += [name, b": ", value, b"\r\n"]
    if not cycle.keep_alive:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    if cycle.scope["method"] != "HEAD":
        out.append(answer.body)
    cycle.response_started = cycle.response_complete = True
    cycle.transport.write(b"".join(out))
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


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
