"""Pacing of a delivery run: at most `rate` messages per second, across claim batches."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """At most `rate` messages per second across a run (None: unlimited).

    The clock and sleep are passed in, so tests drive it without waiting.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0

    def wait(self) -> None:
        """Block until the next message may go out."""
        if not self.interval:
            return
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval
