"""A figure over the last hour, in fixed time slots: what the dashboards' charts draw.

Slots are aligned to wall-clock multiples of `step`, kept in a ring, and each remembers which slot of
time it holds, so a slot left over from an earlier lap reads as empty rather than as stale data. A
slot before the series began is None (no data), not zero (nothing happened).
"""

import time


class Series:
    def __init__(self, step: int, slots: int, gauge: bool = False) -> None:
        self.step = step
        self.gauge = gauge  # a level (the slot keeps the last value set), not a count (slots add up)
        self._values: list[float] = [0.0] * slots
        self._ticks: list[int] = [-1] * slots
        self._started = time.time()
        self._first = int(self._started // step)

    def add(self, now: float, amount: float = 1) -> None:
        index = self._slot(now)
        self._values[index] += amount

    def set(self, now: float, value: float) -> None:
        self._values[self._slot(now)] = value

    def _slot(self, now: float) -> int:
        tick = int(now // self.step)
        index = tick % len(self._values)
        if self._ticks[index] != tick:
            self._ticks[index], self._values[index] = tick, 0.0
        return index

    def values(self, now: float) -> list[float | None]:
        """Oldest first, the slot holding `now` last. A gauge's slot that was never set is None."""
        last = int(now // self.step)
        count = len(self._values)
        found: list[float | None] = []
        for tick in range(last - count + 1, last + 1):
            index = tick % count
            if self._ticks[index] == tick:
                found.append(self._values[index])
            else:
                found.append(None if self.gauge or tick < self._first else 0.0)
        return found

    def rate(self, now: float, seconds: float) -> float:
        """A count's events per second over the slots that cover the last `seconds` (the current one
        included), or since the series began if that is shorter."""
        slots = self.values(now)[-max(1, int(seconds // self.step)):]
        return sum(v or 0.0 for v in slots) / max(1.0, min(len(slots) * self.step, now - self._started))

    def to_json(self, now: float) -> dict:
        """`end` is when the last slot ends (Unix time); values are per slot, oldest first."""
        return {"step": self.step, "end": (int(now // self.step) + 1) * self.step, "values": self.values(now)}
