"""The private internals of aiokafka and PyMongo behind service/client_internals.py, pinned: an
upgrade that moves one, or changes what the worker relies on it to do, fails here by name instead
of silently reordering verdicts, writing an aborted batch, or skipping a check.

- ``AIOKafkaProducer._message_accumulator.fail_all`` (:func:`fail_buffered`): what a replaced
  producer or an aborted transaction still holds is never written.
- ``AIOKafkaProducer._message_accumulator._batch_ttl`` (:func:`keep_batches_until_acked`): a batch
  waiting for its partition's leader does not expire (and would, by default).
- ``AIOKafkaProducer.client.fetch_all_metadata`` (:func:`producer_metadata`): the producer's
  readiness ping.
- ``aiokafka.conn.create_conn`` (:func:`open_connection`): the connect-failure diagnosis.
- ``pymongo.uri_parser_shared._validate_uri`` (:func:`validate_mongo_uri`): the settings' URI check,
  without DNS.

pyproject.toml caps aiokafka and pymongo below their next minor release for the same reason:
raising a cap means running this file first (the broker tests need Java, as the others).
"""
from __future__ import annotations

import asyncio
import inspect
import types

import aiokafka
import pymongo
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, NotLeaderForPartitionError
from aiokafka.producer import message_accumulator
from pymongo.errors import InvalidURI

from service.client_internals import (
    BATCH_TTL_S,
    fail_buffered,
    keep_batches_until_acked,
    open_connection,
    producer_metadata,
    validate_mongo_uri,
)
from service.config import WorkerSettings
from tests.support.worker_helpers import unique

AIOKAFKA_RANGE = ((0, 11), (0, 15))  # as pyproject.toml
PYMONGO_RANGE = ((4, 13), (4, 21))


def _minor(version: str) -> tuple[int, int]:
    major, minor = (int(x) for x in version.split(".")[:2])
    return major, minor


@pytest.mark.parametrize("library, allowed", [(aiokafka, AIOKAFKA_RANGE), (pymongo, PYMONGO_RANGE)],
                         ids=["aiokafka", "pymongo"])
def test_the_installed_library_is_inside_the_range_this_file_pins(library, allowed):
    low, high = allowed
    assert low <= _minor(library.__version__) < high, (
        f"{library.__name__} {library.__version__} is outside {low}..{high}: pyproject.toml's cap and "
        f"this file's range move together, after this file passes on the new release")


# -- aiokafka -------------------------------------------------------------------------------------------
async def test_the_producer_internals_exist_with_the_signatures_used():
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        accumulator = getattr(producer, "_message_accumulator", None)
        assert isinstance(accumulator, message_accumulator.MessageAccumulator), \
            "AIOKafkaProducer._message_accumulator is gone: fail_buffered and keep_batches_until_acked need another way"
        assert list(inspect.signature(type(accumulator).fail_all).parameters) == ["self", "exception"], \
            "MessageAccumulator.fail_all(exception) changed: fail_buffered"
        assert isinstance(accumulator._batch_ttl, float), \
            "MessageAccumulator._batch_ttl is gone: keep_batches_until_acked would do nothing"
        assert inspect.iscoroutinefunction(type(producer.client).fetch_all_metadata), \
            "AIOKafkaProducer.client.fetch_all_metadata() is gone: producer_metadata"
    finally:
        await producer.stop()


async def test_a_batch_waiting_for_its_leader_expires_by_default_and_not_once_kept(monkeypatch):
    """The accumulator's own drain, a day later, with no leader known for the partition: the
    default producer fails the batch (a younger one could then be written before its resend),
    the kept one still holds it."""
    kept, default = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1"), AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    keep_batches_until_acked(kept)
    assert kept._message_accumulator._batch_ttl == BATCH_TTL_S
    tp = TopicPartition("contract", 0)
    try:
        futures = {}
        for name, producer in (("kept", kept), ("default", default)):
            builder = producer.create_batch()
            builder.append(key=b"F1", value=b"v", timestamp=None)
            builder.close()
            futures[name] = await producer._message_accumulator.add_batch(builder, tp, 1)
        a_day_later = message_accumulator.time.monotonic() + 86400
        monkeypatch.setattr(message_accumulator, "time", types.SimpleNamespace(monotonic=lambda: a_day_later))
        kept._message_accumulator.drain_by_nodes(ignore_nodes=set())
        default._message_accumulator.drain_by_nodes(ignore_nodes=set())
        try:
            await asyncio.wait_for(futures["default"], 5)
        except NotLeaderForPartitionError:
            pass
        else:
            pytest.fail("a batch without a leader no longer expires by default: re-check keep_batches_until_acked")
        assert not futures["kept"].done(), "keep_batches_until_acked no longer keeps a batch waiting for its leader"
    finally:
        monkeypatch.undo()
        for producer in (kept, default):
            fail_buffered(producer, KafkaError("test over"))
            await producer.stop()


async def test_what_a_producer_still_holds_is_failed_and_never_written(kafka_server):
    """A batch left lingering in a connected producer: fail_buffered fails its future, and once
    the producer has stopped (stop() flushes what it holds) the partition is still empty."""
    topic = unique("contract-fail")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers, linger_ms=600_000, enable_idempotence=True)
    await producer.start()
    try:
        await producer_metadata(producer)  # the readiness ping answers on a reachable broker
        builder = producer.create_batch()
        builder.append(key=b"F1", value=b"held", timestamp=None)  # not closed: lingers for ten minutes
        future = await producer.send_batch(builder, topic, partition=0)
        fail_buffered(producer, KafkaError("producer replaced"))
        with pytest.raises(KafkaError, match="producer replaced"):
            await asyncio.wait_for(future, 10)  # a timeout here: the batch was not failed
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_server.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        assert await consumer.end_offsets([TopicPartition(topic, 0)]) == {TopicPartition(topic, 0): 0}, \
            "a batch failed by fail_buffered was written anyway"
    finally:
        await consumer.stop()


def test_create_conn_takes_the_arguments_the_diagnosis_passes():
    from aiokafka.conn import create_conn

    settings = WorkerSettings(_env_file=None, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                              kafka_sasl_username="u", kafka_sasl_password="p")  # type: ignore[call-arg]
    assert inspect.iscoroutinefunction(create_conn), "aiokafka.conn.create_conn is no longer a coroutine: open_connection"
    inspect.signature(create_conn).bind("host", 9092, client_id="moldwatch", request_timeout_ms=1000,
                                        **settings.kafka_security_kwargs())


async def test_one_connection_opens_to_a_broker(kafka_server):
    host, _, port = kafka_server.bootstrap_servers.partition(",")[0].rpartition(":")
    conn = await open_connection(host, int(port), client_id="moldwatch-contract", request_timeout_ms=10_000)
    try:
        assert conn.connected(), "open_connection returned a connection that is not open"
    finally:
        conn.close()


# -- PyMongo --------------------------------------------------------------------------------------------
def test_the_uri_parser_checks_without_dns():
    assert validate_mongo_uri("mongodb://user:pw@db1:27017,db2:27018/plant?replicaSet=rs0") is True, \
        "pymongo.uri_parser_shared._validate_uri is gone: the settings no longer check the URI"
    # .invalid never resolves: a lookup would raise ConfigurationError here
    assert validate_mongo_uri("mongodb+srv://cluster0.example.invalid/plant") is True
    with pytest.raises((InvalidURI, ValueError)):  # the errors mongo_uri_problem turns into one line
        validate_mongo_uri("mongodb://db1:notaport/plant")
    with pytest.raises(InvalidURI):
        validate_mongo_uri("http://db1/plant")
