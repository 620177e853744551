"""What ``/readyz`` means, apart from what the worker checks: a progress clock, and a cached answer.

- :class:`ProgressClock`: "ready" must mean "making progress", not only "connected". The clock
  says how long work (records read, batches scored) has waited without any acknowledgement; it is
  0 while nothing waits, so an idle worker is never stalled.
- :class:`CachedProbe`: the worker's check pings MongoDB and Kafka; probes from several kubelets
  and Prometheus would multiply those pings, so an answer is reused for ``cache_s`` and only one
  check runs at a time.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

Reasons = dict[str, str]  # component -> why it is not ready; empty: ready


class ProgressClock:
    def __init__(self, waiting: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.waiting = waiting  # records read but not scored, plus batches not yet acknowledged
        self._clock = clock
        self._at = clock()  # the last time acknowledged work moved, or nothing was waiting

    def moved(self) -> None:
        """Acknowledged work moved now."""
        self._at = self._clock()

    def arriving(self) -> None:
        """Work is about to be queued: when nothing waited, the wait starts now (not at the last ack)."""
        if not self.waiting():
            self._at = self._clock()

    def stalled_seconds(self) -> float:
        """Seconds that work has been waiting without any acknowledgement (0 while idle or moving)."""
        if not self.waiting():
            self._at = self._clock()
            return 0.0
        return self._clock() - self._at


class CachedProbe:
    """``(ready, reasons)`` from ``check``, reused for ``cache_s``; ``on_result(ready)`` on each check."""

    def __init__(self, check: Callable[[], Awaitable[Reasons]], cache_s: float,
                 on_result: Callable[[bool], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self.cache_s = cache_s
        self._on_result = on_result
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: tuple[float, Reasons] | None = None

    async def __call__(self) -> tuple[bool, Reasons]:
        async with self._lock:  # a probe storm waits for the one check in flight, then reuses it
            if self._last is not None and self._clock() - self._last[0] < self.cache_s:
                return not self._last[1], self._last[1]
            reasons = await self._check()
            self._last = (self._clock(), reasons)
            if self._on_result is not None:
                self._on_result(not reasons)
            return not reasons, reasons


__all__ = ["ProgressClock", "CachedProbe", "Reasons"]
