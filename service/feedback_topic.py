"""Read every kept answer from the feedback topic (what ``moldwatch lines update --feedback-topic`` and
an export use): all partitions from the beginning to the end offsets seen at the start, committed
messages only, no consumer group (nothing is committed, two readers never take each other's
partitions). The Kafka connection comes from the worker's settings (``MOLDWATCH_KAFKA_*``: the same
bootstrap servers, TLS and SASL)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from model_store.errors import DataError
from service.config import WorkerSettings
from service.feedback import read_answers


async def read_feedback_topic(settings: WorkerSettings, topic: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The kept answers on ``topic``, in partition and offset order; DataError naming the broker or
    the message (topic/partition@offset) when they cannot be read."""
    where = f"{topic} on {settings.kafka_bootstrap_servers}"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                client_id=f"{settings.kafka_client_id}-feedback-reader", enable_auto_commit=False,
                                isolation_level="read_committed", **settings.kafka_security_kwargs())
    try:
        try:
            await asyncio.wait_for(consumer.start(), timeout_s)
            topics = await asyncio.wait_for(consumer.topics(), timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise DataError(f"feedback topic {where}: cannot connect ({type(exc).__name__}: {str(exc)[:150]}); "
                            f"check MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS and the broker") from None
        if topic not in topics:
            raise DataError(f"feedback topic {where}: no such topic (the worker's kafka_feedback_topic)")
        partitions = [TopicPartition(topic, p) for p in await _partitions(settings, topic, timeout_s)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages: list[tuple[int, int, bytes | None]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiting = {tp for tp in partitions if ends[tp] > 0}
        while waiting:
            if loop.time() > deadline:
                raise DataError(f"feedback topic {where}: not read to its end within {timeout_s:g} s")
            batches = await consumer.getmany(*waiting, timeout_ms=500)
            for tp, records in batches.items():
                messages.extend((tp.partition, r.offset, r.value) for r in records if r.offset < ends[tp])
            # read_committed skips aborted records and transaction markers: the position, not a
            # message count, says when a partition is done
            waiting = {tp for tp in waiting if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    messages.sort()
    lines = [(value or b"").decode("utf-8", errors="replace").replace("\n", " ") for _, _, value in messages]
    names = [f"feedback topic {topic}/{partition}@{offset}" for partition, offset, _ in messages]
    return read_answers(lines, topic, names)


async def _partitions(settings: WorkerSettings, topic: str, timeout_s: float) -> list[int]:
    """The topic's partition ids (the admin client's metadata: the consumer's own is private)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                client_id=f"{settings.kafka_client_id}-feedback-reader", **settings.kafka_security_kwargs())
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        described = await asyncio.wait_for(admin.describe_topics([topic]), timeout_s)
    finally:
        await admin.close()
    return sorted(int(p["partition"]) for t in described if t["topic"] == topic for p in t["partitions"])


__all__ = ["read_feedback_topic"]
