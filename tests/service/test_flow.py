"""The committer's side of the flow (service/flow.py) over a recording commit strategy, without
servers: batches are committed in the order they were scored, counted only once committed, a
checkpoint is asked for after each (when due) and once more at the end, and a final checkpoint that
could not be written is reported (the worker then exits 1)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from service.config import WorkerSettings
from service.flow import BatchFlow, InFlight
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, ScoredRecord
from service.sink import Delivery


class RecordingStrategy:
    """A commit strategy that records each call; its final checkpoint answers ``final``."""

    sink: Any = None
    rebalance_drain_s = 0.0

    def __init__(self, final: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.final = final
        self.held = 0

    async def stage(self, result: BatchResult, on_verdict_ack: Any) -> Delivery:
        return Delivery()

    async def commit(self, delivery: Delivery, positions: list[Any]) -> None:
        self.calls.append(("commit", positions))

    async def checkpoint(self, when_due: bool = False) -> bool:
        self.calls.append(("checkpoint", when_due))
        return True if when_due else self.final

    async def hand_over(self, partitions: set[TopicPartition], fenced: set[tuple[str, int]]) -> None:
        self.calls.append(("hand_over", sorted(fenced)))


def flow(observed: list[Any]) -> BatchFlow:
    settings = WorkerSettings(_env_file=None, checkpoint_interval_s=3600)  # type: ignore[call-arg]
    return BatchFlow(settings, WorkerMetrics(), None, observed.append, asyncio.Event(), lambda s, t: None)  # type: ignore[arg-type]


def scored(record_id: str) -> BatchResult:
    return BatchResult([ScoredRecord({"record_id": record_id, "facility": "F1", "item": "I1"}, 0.0, 0.0)], [], "v1")


async def test_batches_are_committed_in_order_and_counted_once_committed():
    observed: list[Any] = []
    f, strategy = flow(observed), RecordingStrategy()
    for i in range(3):
        await f.in_flight.put(InFlight(Delivery(), scored(f"r{i}"), [("t", 0, i + 1)]))
    await f.in_flight.put(None)  # the scorer's end
    await f.commit(strategy)
    assert [c for c in strategy.calls if c[0] == "commit"] == [("commit", [("t", 0, 1)]), ("commit", [("t", 0, 2)]),
                                                               ("commit", [("t", 0, 3)])]
    assert strategy.calls[1] == ("checkpoint", True) and strategy.calls[-1] == ("checkpoint", False)
    assert [v["record_id"] for v in observed] == ["r0", "r1", "r2"]
    assert f.final_checkpoint_written is True and f.waiting() == 0


async def test_a_final_checkpoint_that_fails_is_reported():
    f, strategy = flow([]), RecordingStrategy(final=False)
    await f.in_flight.put(None)
    await f.commit(strategy)
    assert f.final_checkpoint_written is False


async def test_a_revocation_hands_over_the_fenced_partitions_once_nothing_waits():
    f, strategy = flow([]), RecordingStrategy()
    await f.revoke({TopicPartition("t", 1)}, strategy, lambda: False)
    assert strategy.calls == [("hand_over", [("t", 1)])] and f.fenced == {("t", 1)}
    f.lift({TopicPartition("t", 1)})
    assert f.fenced == set()
