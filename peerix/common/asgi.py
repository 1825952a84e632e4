"""ASGI pieces both servers use: request metrics that count zero-copy bodies too."""

import time
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The ASGI extension for sending a file's bytes without copying them (http/zerocopy.py adds it to uvicorn).
ZEROCOPY = "http.response.zerocopysend"


class RequestObserver(Protocol):
    def observe_request(self, route: str, method: str, status: int, seconds: float, sent: int) -> None: ...


class MetricsMiddleware:
    """Counts every response by route and status, its body bytes and its full duration."""

    def __init__(self, app: ASGIApp, metrics: RequestObserver) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = 500, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == ZEROCOPY:
                sent += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - started, sent)
