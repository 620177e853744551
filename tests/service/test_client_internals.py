"""The few private internals of aiokafka the worker relies on, pinned: an upgrade that moves one
fails here, by name, instead of silently changing how verdicts are aborted or flushed.

- ``AIOKafkaProducer._message_accumulator.fail_all``: on an aborted transaction or a replaced
  producer, fail every record still buffered, so no verdict of an aborted batch is sent later
  (service/exactly_once.py, service/sink.py).
- ``AIOKafkaProducer._txn_manager.is_fatal_error``: a fenced or fatal transactional producer is
  replaced instead of retried (service/exactly_once.py).
- ``AIOKafkaConsumer._client.fetch_all_metadata`` and ``AIOKafkaClient.cluster``: metadata of topics
  the consumer is not subscribed to (positions topic, readiness ping).

pyproject.toml caps aiokafka below the next minor release for the same reason; raising the cap
means running this file first.
"""
from __future__ import annotations

import inspect

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.producer.transaction_manager import TransactionManager


async def test_the_producer_internals_exist_with_the_signatures_used():
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="contract")
    try:
        assert isinstance(producer._message_accumulator, MessageAccumulator)
        assert list(inspect.signature(MessageAccumulator.fail_all).parameters) == ["self", "exception"]
        assert isinstance(producer._txn_manager, TransactionManager)
        assert callable(producer._txn_manager.is_fatal_error) and producer._txn_manager.is_fatal_error() is False
    finally:
        await producer.stop()


async def test_the_consumer_client_internals_exist():
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        assert isinstance(consumer._client, AIOKafkaClient)
        assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata)
        assert hasattr(consumer._client, "cluster")
    finally:
        await consumer.stop()


def test_the_installed_aiokafka_is_inside_the_pinned_range():
    major, minor = (int(x) for x in aiokafka.__version__.split(".")[:2])
    assert (0, 11) <= (major, minor) < (0, 15), aiokafka.__version__
