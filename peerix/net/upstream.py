"""The upstream binary cache (cache.nixos.org by default), as far as peerix asks it: narinfo."""

import time
from collections import OrderedDict

import httpx

from ..nix.narinfo import NarInfo, NarInfoError


class Upstream:
    """Narinfo lookups in the upstream binary cache, remembered for a while (hits and misses)."""

    def __init__(self, url: str, timeout: float = 5.0, ttl: float = 3600.0, entries: int = 65536) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._ttl = ttl
        self._entries = entries
        self._known: OrderedDict[str, tuple[float, NarInfo | None]] = OrderedDict()

    async def narinfo(self, hash_part: str) -> NarInfo | None:
        """The upstream narinfo, None if upstream does not have the path; raises httpx.HTTPError."""
        hit = self._known.get(hash_part)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        response = await self._http.get(f"{self.url}/{hash_part}.narinfo")
        if response.status_code in (404, 403):
            info = None
        else:
            response.raise_for_status()
            try:
                info = NarInfo.parse(response.text)
            except NarInfoError as error:
                raise httpx.DecodingError(f"upstream narinfo for {hash_part}: {error}") from None
        self._known[hash_part] = (time.monotonic() + self._ttl, info)
        self._known.move_to_end(hash_part)
        if len(self._known) > self._entries:
            self._known.popitem(last=False)
        return info

    async def aclose(self) -> None:
        await self._http.aclose()
