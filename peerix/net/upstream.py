"""The upstream binary cache (cache.nixos.org by default): narinfo to vouch for paths, and NARs to
pull through for the fleet.

Asking it for narinfo must not make anyone wait long: a short timeout, and after a failure to reach it (no
route, no answer) it is not asked again for a while; every check meanwhile fails at once, saying so.
"""

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import httpx

from ..nix.narinfo import NarInfo, NarInfoError
from .inflate import InflateError, inflate

NAR_TIMEOUT = httpx.Timeout(30.0, connect=3.0)  # a NAR: silence for this long between chunks ends it


class UpstreamError(Exception):
    """The upstream cache could not be asked, or answered nonsense; the message says which and why."""


class Upstream:
    """Narinfo lookups in the upstream binary cache, remembered for a while (hits and misses)."""

    def __init__(self, url: str, timeout: float = 2.0, ttl: float = 3600.0, entries: int = 65536,
                 retry_after: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry_after = retry_after  # seconds it is left alone after it could not be reached
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._ttl = ttl
        self._entries = entries
        self._known: OrderedDict[str, tuple[float, NarInfo | None]] = OrderedDict()
        self._unreachable: tuple[float, str] | None = None  # (until, why)

    async def narinfo(self, hash_part: str) -> NarInfo | None:
        """The upstream narinfo, None if upstream does not have the path; raises UpstreamError."""
        now = time.monotonic()
        hit = self._known.get(hash_part)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._unreachable is not None and self._unreachable[0] > now:
            raise UpstreamError(f"{self.url} unreachable ({self._unreachable[1]}); not asked again for "
                                f"{self._unreachable[0] - now:.0f} s")
        try:
            response = await self._http.get(f"{self.url}/{hash_part}.narinfo")
        except httpx.TransportError as error:
            why = _describe(error, self.timeout)
            self._unreachable = (time.monotonic() + self.retry_after, why)
            raise UpstreamError(f"{self.url} unreachable ({why})") from None
        self._unreachable = None
        if response.status_code in (404, 403):
            info = None
        elif response.status_code != 200:
            raise UpstreamError(f"{self.url} answered {response.status_code}")
        else:
            try:
                info = NarInfo.parse(response.text)
            except NarInfoError as error:
                raise UpstreamError(f"{self.url} answered a bad narinfo for {hash_part}: {error}") from None
        self._known[hash_part] = (time.monotonic() + self._ttl, info)
        self._known.move_to_end(hash_part)
        if len(self._known) > self._entries:
            self._known.popitem(last=False)
        return info

    async def nar(self, narinfo: NarInfo, on_wire: Callable[[int], None] = lambda count: None
                  ) -> AsyncIterator[bytes]:
        """The path's NAR as plain bytes, streamed from the upstream's file and inflated on the way;
        `on_wire` counts the bytes as they cross the network. Checking the bytes against NarHash is
        the caller's: corruption a codec cannot see (or an uncompressed file) is only caught there."""
        url = httpx.URL(self.url + "/").join(narinfo.url)

        async def raw(response: httpx.Response) -> AsyncIterator[bytes]:
            async for chunk in response.aiter_raw():
                on_wire(len(chunk))
                yield chunk

        try:
            async with self._http.stream("GET", url, timeout=NAR_TIMEOUT) as response:
                if response.status_code != 200:
                    raise UpstreamError(f"{url} answered {response.status_code}")
                async for chunk in inflate(raw(response), narinfo.compression, narinfo.nar_size):
                    yield chunk
        except (httpx.HTTPError, InflateError) as error:
            raise UpstreamError(f"{url}: {error or type(error).__name__}") from None

    async def aclose(self) -> None:
        await self._http.aclose()


def _describe(error: httpx.TransportError, timeout: float) -> str:
    """httpx's timeouts have no message of their own."""
    if isinstance(error, httpx.TimeoutException):
        return f"{type(error).__name__}: no answer within {timeout:g} s"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
