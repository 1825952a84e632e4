"""Compressed NAR files (xz, zstd, bzip2) as plain NAR bytes: off the event loop, in bounded memory.

Binary caches store NARs compressed (cache.nixos.org: xz and zstd); peers get them as plain NARs.
Decompressing on the event loop would stall every other request for as long as a block takes, and a
decompressor fed a whole network chunk can be made to expand it without bound. So one worker thread
per stream reads the compressed bytes through a pipe and decompresses at most `CHUNK` bytes at a
time; the pipe and the output queue are both bounded, so a slow reader slows the network read,
and a stream that inflates past `limit` is refused.
"""

import asyncio
import bz2
import contextlib
import io
import lzma
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

import zstandard

CHUNK = 1 << 20
_DEPTH = 4  # chunks in flight each way
_END = object()


class InflateError(Exception):
    """The compressed stream is corrupt, uses an unknown compression, or inflates past its limit."""


def _zstd(raw: BinaryIO) -> BinaryIO:
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[return-value]


OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    "none": lambda raw: raw,
    "xz": lambda raw: lzma.LZMAFile(raw),  # type: ignore[dict-item]
    "bzip2": lambda raw: bz2.BZ2File(raw),  # type: ignore[dict-item]
    "zstd": _zstd,
}


class _Pipe(io.RawIOBase):
    """Compressed bytes from the event loop to the worker thread; a read blocks until some arrive."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=_DEPTH)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            item = self.queue.get()
            if item is _END:
                self.queue.put(_END)  # later reads see the end too
                return 0
            if isinstance(item, BaseException):
                raise item
            self._rest = memoryview(item)
        count = min(len(buffer), len(self._rest))
        buffer[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count


async def inflate(compressed: AsyncIterator[bytes], compression: str, limit: int) -> AsyncIterator[bytes]:
    """The plain bytes of a compressed stream, in chunks of at most CHUNK; InflateError when it is
    corrupt or yields more than `limit` bytes (the NarSize it claims)."""
    if compression not in OPENERS:
        raise InflateError(f"unknown compression {compression!r}")
    loop = asyncio.get_running_loop()
    pipe = _Pipe()
    output: asyncio.Queue = asyncio.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def deliver(item: object) -> None:
        """Hand an item to the event loop, waiting while the output queue is full (unless stopped)."""
        while not stop.is_set():
            future = asyncio.run_coroutine_threadsafe(output.put(item), loop)
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                future.cancel()

    def work() -> None:
        produced = 0
        try:
            with OPENERS[compression](pipe) as reader:  # type: ignore[attr-defined]
                while not stop.is_set() and (data := reader.read(CHUNK)):
                    produced += len(data)
                    if produced > limit:
                        raise InflateError(f"inflates past {limit} bytes")
                    deliver(bytes(data))
            deliver(_END)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError, InflateError) as error:
            deliver(error if isinstance(error, InflateError) else InflateError(f"corrupt {compression} data: {error}"))
        except BaseException as error:  # a bug: let the reader see it rather than hang
            deliver(error)

    def put(item: object) -> None:
        """Into the pipe, waiting while it is full, unless the worker has stopped reading."""
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                return pipe.queue.put(item, timeout=0.5)

    async def feed() -> None:
        try:
            async for chunk in compressed:
                if chunk:
                    await asyncio.to_thread(put, chunk)
            await asyncio.to_thread(put, _END)
        except Exception as error:  # the network failed: the worker ends with this error
            await asyncio.to_thread(put, error)

    worker = threading.Thread(target=work, name=f"inflate-{compression}", daemon=True)
    worker.start()
    feeder = asyncio.create_task(feed())
    try:
        while (item := await output.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
        with contextlib.suppress(queue.Full):  # wake a worker waiting for input
            pipe.queue.put_nowait(InflateError("stopped"))
        await asyncio.to_thread(worker.join, 5)
