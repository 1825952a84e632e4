"""Token buckets, one per key (a client address, a peer): a steady rate with room for bursts."""


class RateLimiter:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[object, list[float]] = {}  # key -> [tokens, when they were counted]

    def take(self, key: object, now: float, cost: float = 1.0) -> float:
        """0 when the request may go ahead (and its cost is taken), else the seconds until it may."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= cost:
            bucket[0] = tokens - cost
            return 0.0
        bucket[0] = tokens
        return (cost - tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget the buckets that have refilled: they hold nothing a fresh bucket would not."""
        full = [key for key, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
