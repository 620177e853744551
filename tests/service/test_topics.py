"""Output topics checked at start (service/topics.py), against the real Kafka broker."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.topics import TopicError, ensure_topics, refusals
from service.worker import Worker
from tests.support.worker_helpers import unique, wait_for, worker_settings


def test_refusals_keeps_only_real_refusals() -> None:
    # 0: created; 36: TOPIC_ALREADY_EXISTS (a twin worker created it first); 17: INVALID_TOPIC_EXCEPTION;
    # 29: TOPIC_AUTHORIZATION_FAILED.
    answer = [("a", 0, None), ("b", 36, "exists"), ("c", 17, "bad name"), ("d", 29)]
    assert refusals(answer) == [("c", "InvalidTopicError: bad name"), ("d", "TopicAuthorizationFailedError")]
    assert refusals([]) == []


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.servers
async def test_missing_topics_are_created_once(mongo_server, kafka_server, forest_store) -> None:
    name = unique("topics")
    settings = worker_settings(mongo_server, kafka_server, forest_store, name, kafka_new_topic_partitions=2)
    wanted = [settings.kafka_verdicts_topic, settings.kafka_alarms_topic, settings.kafka_verdicts_topic]
    assert await ensure_topics(settings, wanted) == [settings.kafka_verdicts_topic, settings.kafka_alarms_topic]
    assert {settings.kafka_verdicts_topic, settings.kafka_alarms_topic} <= await _topics(kafka_server.bootstrap_servers)
    assert await ensure_topics(settings, wanted) == []  # existing topics are left as they are


@pytest.mark.servers
async def test_a_topic_the_broker_refuses_names_the_topic(mongo_server, kafka_server, forest_store) -> None:
    settings = worker_settings(mongo_server, kafka_server, forest_store, unique("refused"))
    bad = "no spaces allowed in " + unique("topic")
    with pytest.raises(TopicError) as caught:
        await ensure_topics(settings, [settings.kafka_verdicts_topic, bad])
    message = str(caught.value)
    assert f"{bad} (InvalidTopicError" in message and kafka_server.bootstrap_servers in message
    assert "create them, or give the worker's principal CREATE" in message


@pytest.mark.servers
@pytest.mark.timeout(120)
async def test_worker_creates_its_topics_before_reading_and_refuses_to_start_without_one(
        mongo_server, kafka_server, forest_store) -> None:
    name = unique("start")
    settings = worker_settings(mongo_server, kafka_server, forest_store, name)
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        # Topics are checked before the reader starts.
        await wait_for(lambda: worker.supervisor.task("reader") is not None or task.done(), timeout=60)
        assert not task.done(), task
        topics = await _topics(kafka_server.bootstrap_servers)
        assert {settings.kafka_verdicts_topic, settings.kafka_alarms_topic, settings.kafka_dead_letters_topic} <= topics
    finally:
        worker.stop()
        assert await asyncio.wait_for(task, 60) == 0

    refused = Worker(worker_settings(mongo_server, kafka_server, forest_store, unique("nostart"),
                                     kafka_alarms_topic="alarms with spaces"))
    with pytest.raises(TopicError, match="alarms with spaces"):
        await asyncio.wait_for(refused.run(), 60)
    assert refused.exit_code == 2
