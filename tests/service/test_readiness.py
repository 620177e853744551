"""Readiness parts on a hand-driven clock: the progress clock, the cached probe, and the worker's
check over stand-in parts (pure logic: which component is named, with which reason)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from service.readiness import CachedProbe, ProgressClock, check_readiness


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


# -- the worker's check (service/readiness.py check_readiness), over stand-in parts -----------------
class Pinged:
    """A sink or source answering ``ping`` with a fixed reason (None: reachable)."""

    def __init__(self, reason: str | None = None, listening: bool = True, last_error: str = "") -> None:
        self.reason = reason
        self.listening = asyncio.Event()
        if listening:
            self.listening.set()
        self.last_error = last_error

    async def ping(self) -> str | None:
        return self.reason


class Parts:
    """What check_readiness reads of a worker, each part settable."""

    def __init__(self, source: str = "mongo", **parts: Any) -> None:
        from service.config import WorkerSettings
        from service.supervisor import Supervisor

        self.settings = WorkerSettings(_env_file=None, source=source, progress_timeout_s=60)  # type: ignore[call-arg]
        self.store = SimpleNamespace(reason=lambda: parts.get("store"))
        self.source = parts.get("source_part")
        sink = parts.get("sink")
        self.commit = SimpleNamespace(sink=sink) if sink is not None else None
        self.waiting = parts.get("waiting", 0)
        self.clock = Clock()
        self.progress = ProgressClock(lambda: self.waiting, self.clock)
        self.supervisor = Supervisor()


async def test_a_worker_with_every_part_answering_is_ready():
    assert await check_readiness(Parts(sink=Pinged(), source_part=Pinged())) == {}


async def test_each_part_not_ready_is_named_with_its_own_reason():
    before_start = await check_readiness(Parts(source="kafka"))
    assert before_start == {"kafka": "kafka producer not started", "kafka_source": "source not started"}
    parts = Parts(store="model store unusable: bad hash", sink=Pinged("kafka 127.0.0.1:1: connection refused"),
                  source_part=Pinged(listening=False))
    parts.supervisor.stop()
    assert await check_readiness(parts) == {
        "store": "model store unusable: bad hash", "kafka": "kafka 127.0.0.1:1: connection refused",
        "mongodb": "source reachable but not reading yet", "worker": "shutting down"}


async def test_no_progress_while_records_wait_names_the_count_the_time_and_the_last_kafka_error():
    parts = Parts(sink=Pinged(last_error="KafkaTimeoutError: no ack"), source_part=Pinged())
    parts.progress.arriving()
    parts.waiting = 12
    parts.clock.now += 59
    assert await check_readiness(parts) == {}
    parts.clock.now += 1
    assert await check_readiness(parts) == {"progress": "12 record(s) or batch(es) waiting and nothing acknowledged "
                                                        "for 60 s (progress_timeout_s=60); last Kafka error: "
                                                        "KafkaTimeoutError: no ack"}
    parts.supervisor.failed = "committer"
    assert (await check_readiness(parts))["worker"] == "task committer failed"


async def test_reasons_are_scrubbed_of_secrets():
    from service.redact import SCRUB

    SCRUB.register(["s3cr3t-pw"])
    reasons = await check_readiness(Parts(sink=Pinged("kafka auth failed for password s3cr3t-pw"), source_part=Pinged()))
    assert "s3cr3t-pw" not in reasons["kafka"]
