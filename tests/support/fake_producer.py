"""The part of ``AIOKafkaProducer`` the sink uses (partitions, record batches), for tests that
need a producer to fail in a chosen way. Real brokers are tested elsewhere; this fakes only the
failure modes no broker can be made to show on cue."""
from __future__ import annotations

import asyncio
from typing import Any


class FakeBatch:
    """A record batch of at most ``limit`` messages (the first one always fits, as in aiokafka)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[tuple[bytes | None, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any = None) -> object | None:
        if self.closed or len(self.messages) >= self.limit:
            return None
        self.messages.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Subclasses decide what happens to a submitted batch in :meth:`deliver`."""

    partitions = 1
    batch_limit = 16

    async def start(self) -> None:  # the sink replaces a producer whose sends failed
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_limit)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        return await self.deliver(topic, batch.messages)

    async def deliver(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> asyncio.Future[Any]:
        raise NotImplementedError

    @staticmethod
    def settled(exc: BaseException | None = None) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
        return future
