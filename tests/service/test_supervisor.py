"""The supervisor of the worker's tasks: a task that dies stops everything, stopping is two-step,
shutdown goes in order and a drain reports what did not end cleanly. Every wait is on an event."""
from __future__ import annotations

import asyncio
from typing import Any

from service.supervisor import Supervisor


async def forever(log: list[str] | None = None, name: str = "") -> None:
    try:
        await asyncio.Event().wait()
    finally:
        if log is not None:
            log.append(name)


async def test_a_task_that_raises_is_named_reported_and_stops_the_rest():
    failures: list[tuple[str, Any]] = []
    supervisor = Supervisor(on_failure=lambda name, exc: failures.append((name, exc)))
    go = asyncio.Event()

    async def reader() -> None:
        await go.wait()
        raise ConnectionError("stream closed")

    supervisor.spawn("reader", reader())
    supervisor.spawn("scorer", forever())
    go.set()
    await asyncio.wait_for(supervisor.stopping.wait(), 30)
    assert supervisor.failed == "reader"
    assert [(n, type(e)) for n, e in failures] == [("reader", ConnectionError)]
    assert not supervisor.give_up.is_set()
    await supervisor.cancel_all()


async def test_a_task_that_returns_while_it_should_run_is_a_failure():
    supervisor = Supervisor()

    async def quits() -> None:
        return None

    await supervisor.spawn("store-watcher", quits())
    assert supervisor.failed == "store-watcher" and supervisor.stopping.is_set()


async def test_tasks_allowed_to_finish_and_tasks_ending_after_a_stop_are_not_failures():
    supervisor = Supervisor()

    async def done() -> None:
        return None

    await supervisor.spawn("scorer", done(), may_finish=True)
    assert supervisor.failed is None and not supervisor.stopping.is_set()
    supervisor.stop()
    await supervisor.spawn("reader", done())  # returned after the stop: that is the drain
    assert supervisor.failed is None


async def test_a_cancelled_task_is_not_a_failure():
    supervisor = Supervisor()
    task = supervisor.spawn("reader", forever())
    await asyncio.sleep(0)  # let it start
    await supervisor.cancel("reader")
    assert task.cancelled() and supervisor.failed is None and not supervisor.stopping.is_set()


async def test_only_the_first_failure_is_named():
    supervisor = Supervisor()

    async def boom(message: str) -> None:
        raise RuntimeError(message)

    first, second = supervisor.spawn("a", boom("a")), supervisor.spawn("b", boom("b"))
    await asyncio.wait({first, second})
    assert supervisor.failed == "a"


def test_stop_is_two_steps():
    supervisor = Supervisor()
    supervisor.stop()
    assert supervisor.stopping.is_set() and not supervisor.give_up.is_set()
    supervisor.stop()
    assert supervisor.give_up.is_set()
    supervisor.stop()  # further requests change nothing
    assert supervisor.stopping.is_set() and supervisor.give_up.is_set()


async def test_cancel_goes_in_the_order_given_and_cancel_all_newest_first():
    supervisor = Supervisor()
    ended: list[str] = []
    for name in ("monitor", "reader", "watcher", "scorer"):
        supervisor.spawn(name, forever(ended, name))
    await asyncio.sleep(0)  # let them start
    await supervisor.cancel("watcher", "reader", "no-such-task")
    assert ended == ["watcher", "reader"]
    await supervisor.cancel_all()
    assert ended == ["watcher", "reader", "scorer", "monitor"]
    assert supervisor.failed is None


async def test_drain_waits_for_tasks_that_finish_and_cancels_those_that_do_not():
    supervisor = Supervisor()
    release = asyncio.Event()

    async def finishes() -> str:
        await release.wait()
        return "done"

    async def raises() -> None:
        await release.wait()
        raise OSError("checkpoint failed")

    supervisor.stop()  # the drain happens while stopping
    supervisor.spawn("scorer", finishes(), may_finish=True)
    supervisor.spawn("committer", raises(), may_finish=True)
    stuck = supervisor.spawn("stuck", forever())
    release.set()
    # "stuck" never ends: the timeout is what the drain is about, not a timing assertion
    unclean = await supervisor.drain(["scorer", "committer", "stuck", "absent"], timeout=0.05)
    assert unclean == ["committer", "stuck"] and stuck.cancelled()
    assert supervisor.task("scorer").result() == "done"


async def test_until_stopping_runs_the_work_or_cancels_it_when_a_stop_comes_first():
    supervisor = Supervisor()

    async def answer() -> int:
        return 42

    assert await supervisor.until_stopping(answer()) is True
    cancelled = asyncio.Event()

    async def connect() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.create_task(supervisor.until_stopping(connect()))
    await asyncio.sleep(0)
    supervisor.stop()
    assert await waiting is False and cancelled.is_set()  # waited for the cancellation to land


async def test_until_give_up_returns_at_once_when_the_deadline_passes():
    supervisor = Supervisor()
    supervisor.stop()
    hold = asyncio.Event()

    async def slow_abort() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await hold.wait()  # like aborting a transaction against a hung broker
            raise

    waiting = asyncio.create_task(supervisor.until_give_up(slow_abort()))
    await asyncio.sleep(0)
    supervisor.stop()  # the second stop is the give-up
    assert await waiting is False  # did not wait for the slow abort
    hold.set()


async def test_errors_of_the_awaited_work_are_raised():
    supervisor = Supervisor()

    async def fails() -> None:
        raise ValueError("bad")

    try:
        await supervisor.until_stopping(fails())
    except ValueError as exc:
        assert str(exc) == "bad"
    else:
        raise AssertionError("not raised")


async def test_the_shutdown_deadline_sets_give_up():
    supervisor = Supervisor()
    handle = supervisor.give_up_after(0.0)
    await asyncio.wait_for(supervisor.give_up.wait(), 30)
    handle.cancel()
    later = Supervisor()
    later.give_up_after(3600).cancel()
    await asyncio.sleep(0)
    assert not later.give_up.is_set()


async def test_a_failure_before_any_stop_is_still_raised_when_a_stop_follows():
    supervisor = Supervisor()

    async def fails() -> None:
        raise ValueError("bad")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    supervisor.stop()  # the event is set, but the work had failed on its own before
    try:
        await supervisor.until_stopping(task)
    except ValueError:
        pass
    else:
        raise AssertionError("a failure that came first was swallowed")
