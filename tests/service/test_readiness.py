"""Readiness parts on a hand-driven clock: the progress clock and the cached probe."""
from __future__ import annotations

import asyncio

from service.readiness import CachedProbe, ProgressClock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_clock_counts_only_while_work_waits():
    clock, waiting = Clock(), [0]
    progress = ProgressClock(lambda: waiting[0], clock)
    clock.now += 50
    assert progress.stalled_seconds() == 0.0  # idle: never stalled
    progress.arriving()
    waiting[0] = 3
    clock.now += 7
    assert progress.stalled_seconds() == 7.0
    progress.arriving()  # more work while some waits: the wait started earlier
    clock.now += 1
    assert progress.stalled_seconds() == 8.0
    progress.moved()  # an acknowledgement
    clock.now += 2
    assert progress.stalled_seconds() == 2.0
    waiting[0] = 0
    assert progress.stalled_seconds() == 0.0
    clock.now += 30
    waiting[0] = 1  # work appeared without arriving() (a batch in flight): counted from the last idle look
    assert progress.stalled_seconds() == 30.0


async def test_the_probe_reuses_an_answer_for_cache_s_and_reports_each_check():
    clock, checks, results = Clock(), [], []
    reasons = [{"kafka": "down"}, {}]

    async def check() -> dict[str, str]:
        checks.append(clock.now)
        return reasons[len(checks) - 1]

    probe = CachedProbe(check, cache_s=5.0, on_result=results.append, clock=clock)
    assert await probe() == (False, {"kafka": "down"})
    clock.now += 4.9
    assert await probe() == (False, {"kafka": "down"}) and len(checks) == 1
    clock.now += 0.1  # 5.0 s old: checked again
    assert await probe() == (True, {})
    assert checks == [100.0, 105.0] and results == [False, True]


async def test_without_a_cache_every_probe_checks_one_at_a_time():
    gate, inside, most, count = asyncio.Event(), [0], [0], [0]

    async def check() -> dict[str, str]:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        count[0] += 1
        await gate.wait()
        inside[0] -= 1
        return {}

    probe = CachedProbe(check, cache_s=0.0)
    probes = [asyncio.create_task(probe()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*probes) == [(True, {})] * 3
    assert most[0] == 1 and count[0] == 3
