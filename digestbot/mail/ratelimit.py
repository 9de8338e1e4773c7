"""Pacing of a delivery run: at most `rate` messages per second, across claim batches and workers."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """At most `rate` messages per second across a run (None: unlimited).

    The clock and sleep are passed in, so tests drive it without waiting. `shared` gives each of
    several worker processes its share of one rate.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        first_at: float = 0.0,
    ) -> None:
        self.rate = rate or None
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = first_at

    @classmethod
    def shared(
        cls,
        rate: float | None,
        *,
        workers: int,
        index: int,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter:
        """Worker `index` of `workers` sharing `rate`: it paces at rate/workers, its first message
        at `start` (default: now on `clock`; time.monotonic is one clock for every process of a
        host) plus index/rate, so the workers together keep to `rate` from the first message on."""
        if not rate:
            return cls(None, clock=clock, sleep=sleep)
        workers = max(1, workers)
        return cls(
            rate / workers,
            clock=clock,
            sleep=sleep,
            first_at=(clock() if start is None else start) + index / rate,
        )

    def wait(self) -> None:
        """Block until the next message may go out."""
        if not self.interval:
            return
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval
