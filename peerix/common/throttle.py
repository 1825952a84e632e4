"""Bandwidth caps: one token bucket of bytes per second, shared by every transfer in a direction,
so that a laptop serving its peers does not saturate its own link."""

import asyncio
import time


class Throttle:
    def __init__(self, rate: float = 0, burst_seconds: float = 0.1) -> None:
        self.burst_seconds = burst_seconds
        self.rate = 0.0
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        """Bytes per second; 0 lifts the cap."""
        self.rate = float(rate)
        self._tokens = self.rate * self.burst_seconds
        self._last = time.monotonic()

    @property
    def limited(self) -> bool:
        return self.rate > 0

    async def take(self, size: int) -> None:
        """Wait until `size` bytes may go. Takers run into debt and sleep it off, so concurrent
        transfers share the rate instead of each getting all of it."""
        if not self.rate:
            return
        now = time.monotonic()
        self._tokens = min(self.rate * self.burst_seconds, self._tokens + (now - self._last) * self.rate) - size
        self._last = now
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
