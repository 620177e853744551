"""Supervision of the worker's long-running tasks: spawn them by name, notice one that dies, stop
them in order.

The worker is a few tasks on one event loop (reader, scorer, committer, watchers, loop monitor).
Any of them ending on its own is a fault: a task that raised, or one that returned while it should
run until stopped. Then the whole worker stops (exit code 1) rather than limp on with, say, a dead
reader and a ``/readyz`` that still says ready; a restart by the orchestrator is the fix.

Stopping has two steps, both safe from a signal handler (:meth:`Supervisor.stop`): the first sets
``stopping`` (no more reading; drain what was read); a second, or the shutdown deadline, sets
``give_up`` (stop waiting for Kafka: what is unacknowledged is read again after a restart).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

import structlog

log = structlog.get_logger("moldwatch.supervisor")


class Supervisor:
    def __init__(self, on_failure: Callable[[str, BaseException | None], None] | None = None,
                 prefix: str = "moldwatch") -> None:
        self._on_failure = on_failure
        self._prefix = prefix
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._may_finish: set[str] = set()
        self.stopping = asyncio.Event()
        self.give_up = asyncio.Event()  # shutdown deadline passed (or a second stop): stop waiting
        self.failed: str | None = None  # the first task that died

    # -- tasks -----------------------------------------------------------------------------------
    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *, may_finish: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` as task ``name``. It must run until cancelled, unless ``may_finish``: then
        returning is fine (raising is still a failure)."""
        task = asyncio.create_task(coro, name=f"{self._prefix}-{name}")
        self._tasks[name] = task
        if may_finish:
            self._may_finish.add(name)
        task.add_done_callback(partial(self._done, name))
        return task

    def task(self, name: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(name)

    def _done(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and (self.stopping.is_set() or name in self._may_finish):
            return
        if self.failed is None:
            self.failed = name
        log.error("worker task failed; stopping", task=name,
                  error=f"{type(exc).__name__}: {exc}" if exc else "returned unexpectedly", exc_info=exc)
        if self._on_failure is not None:
            self._on_failure(name, exc)
        self.stop()

    # -- stopping --------------------------------------------------------------------------------
    def stop(self) -> None:
        """First call: ``stopping``. Second call: ``give_up`` (stop waiting for Kafka)."""
        if not self.stopping.is_set():
            log.info("stopping: no more reading, draining what was read")
            self.stopping.set()
        elif not self.give_up.is_set():
            log.warning("second stop request: not waiting for Kafka any longer")
            self.give_up.set()

    def give_up_after(self, seconds: float) -> asyncio.TimerHandle:
        """The shutdown deadline: ``give_up`` is set after ``seconds`` (cancel the handle if done first)."""
        return asyncio.get_running_loop().call_later(seconds, self.give_up.set)

    async def until_stopping(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Await ``coro`` unless a stop comes first (then cancel it, wait for it, return False)."""
        return await self._unless(coro, self.stopping, settle=True)

    async def until_give_up(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Await ``coro`` unless the shutdown deadline passes first (then cancel it and return
        False at once: aborting a Kafka request can take a broker timeout, and the deadline is past)."""
        return await self._unless(coro, self.give_up, settle=False)

    async def _unless(self, coro: Coroutine[Any, Any, Any], event: asyncio.Event, settle: bool) -> bool:
        task = asyncio.ensure_future(coro)
        waiting = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not task.done():
            task.cancel()
            if settle:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            return False
        task.result()
        return True

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks one after the other, each awaited (in the order given)."""
        for name in names:
            task = self._tasks.get(name)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def cancel_all(self) -> None:
        """Cancel every task, the newest first (what was started last depends on what came before)."""
        await self.cancel(*reversed(list(self._tasks)))

    async def drain(self, names: Iterable[str], timeout: float) -> list[str]:
        """Let the named tasks finish on their own within ``timeout``; cancel those still running.
        Returns the names of those that did not end cleanly (cancelled here, or raised)."""
        tasks = {name: self._tasks[name] for name in names if name in self._tasks}
        pending = [t for t in tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        unclean = []
        for name, task in tasks.items():
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                unclean.append(name)
            elif not task.cancelled() and task.exception() is not None:
                unclean.append(name)
        return unclean


class LoopLag:
    """How late the event loop runs a timer (liveness, ``moldwatch_event_loop_lag_seconds``): a
    blocking call on the loop shows here before anything else stalls."""

    TICK_S = 0.5

    def __init__(self, report: Callable[[float], Any]) -> None:
        self.seconds = 0.0
        self._report = report

    async def watch(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            self.seconds = max(0.0, time.monotonic() - started - self.TICK_S)
            self._report(self.seconds)


__all__ = ["Supervisor", "LoopLag"]
