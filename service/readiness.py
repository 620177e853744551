"""What ``/readyz`` means: the worker's check, a progress clock, and a cached answer.

- :func:`check_readiness`: every reason the worker is not ready, by component: no store served,
  the Kafka producer or the source unreachable (each names the address and the cause) or the
  source not reading yet, no progress for ``progress_timeout_s`` while work waits, a failed task,
  shutting down. Warnings (``/readyz`` still 200) are the store's (:meth:`StoreHolder.warnings`).
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from service.redact import scrub

if TYPE_CHECKING:
    from service.commit import CommitStrategy
    from service.config import WorkerSettings
    from service.sources import Source
    from service.store_holder import StoreHolder
    from service.supervisor import Supervisor

Reasons = dict[str, str]  # component -> why it is not ready; empty: ready


class Checked(Protocol):
    """What the check reads of the worker (its parts appear as it starts: None until then)."""

    @property
    def settings(self) -> WorkerSettings: ...
    @property
    def store(self) -> StoreHolder: ...
    @property
    def source(self) -> Source | None: ...
    @property
    def commit(self) -> CommitStrategy | None: ...
    @property
    def progress(self) -> ProgressClock: ...
    @property
    def supervisor(self) -> Supervisor: ...


async def check_readiness(worker: Checked) -> Reasons:
    """Why ``worker`` is not ready, by component (empty: ready); pings run concurrently."""
    reasons: Reasons = {}
    store_problem = worker.store.reason()
    if store_problem:
        reasons["store"] = store_problem
    source, sink = worker.source, worker.commit.sink if worker.commit is not None else None
    source_key = "mongodb" if worker.settings.source == "mongo" else "kafka_source"
    pings: dict[str, Awaitable[str | None]] = {}
    if sink is None:
        reasons["kafka"] = "kafka producer not started"
    else:
        pings["kafka"] = sink.ping()  # not connected yet: names each broker address and why
    if source is None:
        reasons[source_key] = "source not started"
    else:
        pings[source_key] = source.ping()
    results = await asyncio.gather(*pings.values())
    for key, reason in zip(pings, results):
        if reason:
            reasons[key] = reason
    if source is not None and source_key not in reasons and not source.listening.is_set():
        reasons[source_key] = "source reachable but not reading yet"
    stalled, timeout = worker.progress.stalled_seconds(), worker.settings.progress_timeout_s
    if stalled >= timeout:
        reasons["progress"] = (f"{worker.progress.waiting()} record(s) or batch(es) waiting and nothing acknowledged "
                               f"for {stalled:.0f} s (progress_timeout_s={timeout:g})"
                               + (f"; last Kafka error: {sink.last_error}" if sink and sink.last_error else ""))
    if worker.supervisor.failed:
        reasons["worker"] = f"task {worker.supervisor.failed} failed"
    elif worker.supervisor.stopping.is_set():
        reasons["worker"] = "shutting down"
    return {key: scrub(reason) for key, reason in reasons.items()}


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


__all__ = ["ProgressClock", "CachedProbe", "Reasons", "Checked", "check_readiness"]
