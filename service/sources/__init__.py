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
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

import asyncio

from service.pipeline import SourceMessage

Emit = Callable[[SourceMessage], Awaitable[None]]


class CheckpointUnavailable(Exception):
    """A checkpoint store that is not the source itself (the exactly-once position topic) cannot
    be read or written right now; the source retries, as for its own errors."""


class Source(Protocol):
    name: str
    listening: asyncio.Event

    async def run(self, emit: Emit) -> None: ...

    async def commit(self, positions: list[Any]) -> None: ...

    def compact(self, positions: list[Any]) -> list[Any]: ...

    async def ping(self) -> str | None: ...

    async def close(self) -> None: ...


__all__ = ["Source", "Emit", "CheckpointUnavailable"]
