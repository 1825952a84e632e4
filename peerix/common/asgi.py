"""ASGI pieces both servers use: request metrics that count zero-copy bodies too, and hot routes
answered without the router."""

import time
from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The ASGI extension for sending a file's bytes without copying them (http/zerocopy.py adds it to uvicorn).
ZEROCOPY = "http.response.zerocopysend"

# The app that answers a request without the router, or None to leave it to the router. It names the
# route for the metrics as Starlette does, with `scope["endpoint"]`, once it commits to one.
FastRoute = Callable[[Scope], ASGIApp | None]

PLAIN_TYPE = b"text/plain; charset=utf-8"


class RequestObserver(Protocol):
    def observe_sent(self, route: str, count: int) -> None: ...

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None: ...


class Whole:
    """A response whose body is at hand: an ASGI app without Starlette's Response machinery, which the
    daemon's HTTP protocol also writes straight to the socket when it is known at once (no ASGI task)."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = [(b"content-length", b"%d" % len(body)), (b"content-type", content_type), *(headers or ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def plain(status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> Whole:
    """An answer a person reads (an error, mostly): one line of text."""
    return Whole(status, text.encode() + b"\n", PLAIN_TYPE, headers)


class MetricsMiddleware:
    """Counts every response by route and status and its full duration, and its body bytes as they
    are sent: a long NAR moves the byte counter all along (what `peerix fetch` shows), not at its end.

    The requests `fast` takes (a server's most frequent ones, that cost little themselves) skip `app`:
    Starlette's routing and middleware chain cost more than answering them.
    """

    def __init__(self, app: ASGIApp, metrics: RequestObserver, fast: FastRoute | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.fast = fast or (lambda scope: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        app = self.fast(scope) or self.app
        head = scope["method"] == "HEAD"  # the server drops the body

        async def counting_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            await send(message)
            if not head and (sent := message["count"] if kind == ZEROCOPY else len(message.get("body", b""))):
                self.metrics.observe_sent(_route(scope), sent)

        try:
            await app(scope, receive, counting_send)
        finally:
            self.metrics.observe_request(_route(scope), scope["method"], status, time.perf_counter() - started)

    def answer_at_once(self, scope: Scope) -> Whole | None:
        """The response, counted as sent, when `fast` knows it without waiting for anything; None: call the app.
        For servers that can write a response without running the app as a task (http/zerocopy.py)."""
        started = time.perf_counter()
        answer = self.fast(scope)
        if not isinstance(answer, Whole):
            return None
        route = _route(scope)
        if scope["method"] != "HEAD":
            self.metrics.observe_sent(route, len(answer.body))
        self.metrics.observe_request(route, scope["method"], answer.status, time.perf_counter() - started)
        return answer


def _route(scope: Scope) -> str:
    return getattr(scope.get("endpoint"), "__name__", "unmatched")
