"""A NAR (or a byte range of it) as an HTTP response: streamed, exactly the bytes announced, large
files sent zero-copy."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from starlette.types import Receive, Scope, Send

from ..common.asgi import ZEROCOPY
from ..common.throttle import Throttle
from ..nix import nar

NAR_TYPE = "application/x-nix-nar"
THROTTLED_SLICE = 1 << 20

# (outcome, bytes sent, seconds, error or None); outcome is complete, aborted (client left) or failed
Finished = Callable[[str, int, float, Exception | None], None]


class NarResponse:
    """Sends the NAR's parts as they come: bytes chunks as they are, files zero-copy when the server
    offers it and read in chunks otherwise. A NAR that does not add up to `size` is cut short, so
    the client sees a broken transfer instead of a wrong NAR."""

    def __init__(self, parts: AsyncIterator[nar.Segment], size: int, finished: Finished,
                 throttle: Throttle | None = None, content_range: str | None = None,
                 progress: Callable[[int], None] = lambda count: None) -> None:
        self.parts = parts
        self.size = size  # of the body: the NAR's, or the range's
        self.finished = finished
        self.throttle = throttle or Throttle()
        self.content_range = content_range  # a 206 answer's Content-Range
        self.progress = progress  # bytes as they are sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        headers = [(b"content-type", NAR_TYPE.encode()), (b"content-length", str(self.size).encode()),
                   (b"accept-ranges", b"bytes")]
        if self.content_range:
            headers.append((b"content-range", self.content_range.encode()))
        await send({"type": "http.response.start", "status": 206 if self.content_range else 200, "headers": headers})
        client_left = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, client_left))
        zerocopy = ZEROCOPY in scope.get("extensions", {})
        sent, outcome, error = 0, "aborted", None
        try:
            async for part in self.parts:
                if client_left.is_set():
                    break
                if isinstance(part, bytes):
                    chunks = [part]
                elif zerocopy:
                    self._check(sent + part.size)
                    with nar.open_file(part) as file:
                        # in throttle-sized slices when capped, else in one go
                        step = THROTTLED_SLICE if self.throttle.limited else part.size
                        for offset in range(0, part.size, step):
                            count = min(step, part.size - offset)
                            await self.throttle.take(count)
                            await send({"type": ZEROCOPY, "file": file, "offset": offset, "count": count,
                                        "more_body": True})
                            self.progress(count)
                    sent += part.size
                    continue
                else:
                    chunks = nar.read_file(part)
                for chunk in chunks:
                    sent += len(chunk)
                    self._check(sent)
                    await self.throttle.take(len(chunk))
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self.progress(len(chunk))
            else:
                if sent != self.size:
                    raise nar.NarError(f"NAR ended after {sent} of {self.size} bytes")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                outcome = "complete"
        except ConnectionError:
            pass  # the client went away during a zero-copy send: aborted
        except OSError as exc:  # NarError included: unreadable or changed files
            outcome, error = "failed", exc
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            with contextlib.suppress(Exception):
                await self.parts.aclose()  # type: ignore[attr-defined]
            self.finished(outcome, sent, time.monotonic() - started, error)

    def _check(self, sent: int) -> None:
        if sent > self.size:
            raise nar.NarError(f"NAR is longer than its NarSize {self.size}")


async def _watch_disconnect(receive: Receive, client_left: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    client_left.set()
