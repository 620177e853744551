"""Sources of raw production records: the MongoDB change stream and, for scale-out, a Kafka topic.

Every source is a thin adapter with the same small surface, so the worker does not care which
one feeds it:

- ``run(emit)``: read forever, ``await emit(message)`` for each record. ``emit`` puts into the
  worker's bounded queue, so a slow sink stops the reading here (backpressure).
- ``commit(positions)``: the records up to these positions have verdicts acknowledged by Kafka;
  persist that (a resume-token checkpoint, consumer-group offsets).
- ``compact(positions)``: the fewest positions that commit the same thing (kept while a commit fails).
- ``ping()``: ``None`` when the upstream answers now, else the reason (readiness).
- ``listening``: set once the source reads from a definite position (tests and the demo wait on it).

What only exactly-once or a rebalance needs is part of the same surface, so the commit strategies
(service/commit.py) call it on any source; a source it does not concern answers with a no-op:

- ``position_store``: where the source keeps its checkpoint instead of its own store (exactly-once
  with MongoDB: the Kafka positions topic); a Kafka source's checkpoint is its consumer offsets.
- ``checkpoint_fields(position)``: a compacted position as the fields a position store keeps;
  ``None`` from a source whose checkpoint is consumer offsets.
- ``offsets(positions)``: the consumer offsets a Kafka transaction commits; ``{}`` elsewhere.
- ``drop(positions, partitions)``: positions without those of revoked partitions; unchanged where
  there are no partitions.
- ``wait_materialized(offsets, timeout_s)``: until committed offsets are readable by a partition's
  next owner; ``[]`` at once where nothing is handed over.

:func:`service.sources.factory.open_source` opens the source the settings name.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from service.pipeline import SourceMessage

if TYPE_CHECKING:
    from aiokafka import TopicPartition

Emit = Callable[[SourceMessage], Awaitable[None]]


class CheckpointUnavailable(Exception):
    """A checkpoint store that is not the source itself (the exactly-once position topic) cannot
    be read or written right now; the source retries, as for its own errors."""


class PositionStore(Protocol):
    """A checkpoint store apart from the source (service/exactly_once.py ``KafkaPositionStore``)."""

    async def load(self) -> dict[str, Any] | None: ...

    async def save(self, fields: dict[str, Any]) -> None: ...


class Source(Protocol):
    name: str
    listening: asyncio.Event
    position_store: PositionStore | None

    async def run(self, emit: Emit) -> None: ...

    async def commit(self, positions: list[Any]) -> None: ...

    def compact(self, positions: list[Any]) -> list[Any]: ...

    async def ping(self) -> str | None: ...

    async def close(self) -> None: ...

    def checkpoint_fields(self, position: Any) -> dict[str, Any] | None: ...

    def offsets(self, positions: list[Any]) -> dict[TopicPartition, int]: ...

    def drop(self, positions: list[Any], partitions: set[TopicPartition]) -> list[Any]: ...

    async def wait_materialized(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> list[tuple[str, int]]: ...


__all__ = ["Source", "PositionStore", "Emit", "CheckpointUnavailable"]
