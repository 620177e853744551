"""The source the settings name (``settings.source``): :func:`open_source`.

Apart from the package's protocol (:mod:`service.sources`), which the concrete sources import:
the protocol imports no source, so the sources and the package form no import circle.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from model_store.schema import PlantSchema
    from service.config import WorkerSettings
    from service.metrics import WorkerMetrics
    from service.sources import Source

OnPartitions = Callable[[set["TopicPartition"]], Awaitable[None]]


def open_source(settings: WorkerSettings, schema: PlantSchema, metrics: WorkerMetrics,
                on_revoked: OnPartitions, on_assigned: OnPartitions) -> Source:
    """The source ``settings.source`` names (the rebalance callbacks concern only Kafka's)."""
    if settings.source == "kafka":
        from service.sources.kafka import KafkaSource

        return KafkaSource(settings, metrics, on_revoked=on_revoked, on_assigned=on_assigned)
    from service.sources.mongo import MongoSource

    return MongoSource(settings, schema, metrics)


__all__ = ["open_source"]
