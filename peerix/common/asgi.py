"""ASGI pieces both servers use: request metrics that count zero-copy bodies too."""

import time
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The ASGI extension for sending a file's bytes without copying them (http/zerocopy.py adds it to uvicorn).
ZEROCOPY = "http.response.zerocopysend"


class RequestObserver(Protocol):
    def observe_sent(self, route: str, count: int) -> None: ...

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None: ...


class MetricsMiddleware:
    """Counts every response by route and status and its full duration, and its body bytes as they
    are sent: a long NAR moves the byte counter all along (what `peerix fetch` shows), not at its end."""

    def __init__(self, app: ASGIApp, metrics: RequestObserver) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            await send(message)
            if sent := message["count"] if kind == ZEROCOPY else len(message.get("body", b"")):
                self.metrics.observe_sent(_route(scope), sent)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe_request(_route(scope), scope["method"], status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    return getattr(scope.get("endpoint"), "__name__", "unmatched")
