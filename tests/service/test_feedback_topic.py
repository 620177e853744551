"""Reading the kept answers back from the feedback topic (real Kafka broker): every partition to
its end, committed messages only, bad messages and dead brokers named."""
from __future__ import annotations

import json

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from model_store.errors import DataError
from service.config import WorkerSettings
from service.feedback_topic import read_feedback_topic
from tests.support.worker_helpers import unique, wait_for

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]


def kept(n: int, label: str = "false_alarm") -> dict:
    return {"feedback_version": 1, "record_id": f"r{n}", "label": label, "at": "2026-12-05T08:00:00.000+00:00",
            "idempotency_key": f"k{n}", "verdict": {"model_version": "v1", "score": 1.5, "anomaly": True,
                                                     "facility": "F1", "item": "I1"}}


async def make_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])

        async def led() -> bool:  # every partition has a leader: offsets can be asked for
            described = await admin.describe_topics([topic])
            found = [p for t in described if t["topic"] == topic for p in t["partitions"]]
            return len(found) == partitions and all(p["leader"] >= 0 for p in found)

        await wait_for(led, timeout=30)
    finally:
        await admin.close()


def settings_for(bootstrap: str) -> WorkerSettings:
    return WorkerSettings(_env_file=None, kafka_bootstrap_servers=bootstrap)  # type: ignore[call-arg]


async def test_every_partition_is_read_to_its_end_committed_only(kafka_server) -> None:
    topic = unique("kept-feedback")
    await make_topic(kafka_server.bootstrap_servers, topic, 3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            for n in range(30):
                await producer.send(topic, json.dumps(kept(n)).encode(), key=f"r{n}".encode())
        await producer.begin_transaction()  # an aborted transaction: never read
        await producer.send(topic, json.dumps(kept(99, "defect")).encode(), key=b"r99")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, json.dumps(kept(30)).encode(), key=b"r30")
    finally:
        await producer.stop()
    answers = await read_feedback_topic(settings_for(kafka_server.bootstrap_servers), topic, timeout_s=30)
    assert sorted(a["record_id"] for a in answers) == sorted(f"r{n}" for n in range(31))


async def test_an_empty_topic_reads_as_no_answers_and_a_missing_one_is_named(kafka_server) -> None:
    topic = unique("kept-empty")
    await make_topic(kafka_server.bootstrap_servers, topic, 2)
    assert await read_feedback_topic(settings_for(kafka_server.bootstrap_servers), topic, timeout_s=30) == []
    with pytest.raises(DataError, match=f"feedback topic {topic}-nope on .*: no such topic"):
        await read_feedback_topic(settings_for(kafka_server.bootstrap_servers), topic + "-nope", timeout_s=30)


async def test_a_message_that_is_no_feedback_record_is_named_by_partition_and_offset(kafka_server) -> None:
    topic = unique("kept-bad")
    await make_topic(kafka_server.bootstrap_servers, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, json.dumps(kept(1)).encode())
        await producer.send_and_wait(topic, b"\xff not json")
    finally:
        await producer.stop()
    with pytest.raises(DataError, match=rf"feedback topic {topic}/0@1: not JSON"):
        await read_feedback_topic(settings_for(kafka_server.bootstrap_servers), topic, timeout_s=30)


async def test_a_dead_broker_is_one_error_naming_it() -> None:
    with pytest.raises(DataError, match=r"feedback topic t on 127\.0\.0\.1:9: cannot connect"):
        await read_feedback_topic(settings_for("127.0.0.1:9"), "t", timeout_s=5)


async def test_lines_update_reads_the_topic_with_the_workers_kafka_settings(kafka_server, forest_plant, forest_store,
                                                                             tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from service.cli import app
    from service.line_book_file import read_line_book
    from tests.service.test_lines_command import answers, part_alarms
    from tests.service.test_lines_command import scored as scored_fixture

    scored = scored_fixture.__wrapped__(forest_plant, forest_store)  # type: ignore[attr-defined]
    topic = unique("kept-for-lines")
    await make_topic(kafka_server.bootstrap_servers, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers)
    await producer.start()
    try:
        for row in answers(part_alarms(scored)[:40], "false_alarm"):
            await producer.send(topic, json.dumps(row).encode(), key=row["record_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    monkeypatch.setenv("MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS", kafka_server.bootstrap_servers)
    lines = tmp_path / "lines.json"
    import asyncio

    # the command runs its own event loop: off this test's
    result = await asyncio.to_thread(CliRunner().invoke, app, ["lines", "update", "--store", str(forest_store),
                                                               "--feedback-topic", topic, "--lines", str(lines)],
                                     catch_exceptions=False)
    assert result.exit_code == 0, result.output
    book = read_line_book(lines)
    assert book.line_of(*scored["part"]) > 1.0 and book.change == f"update from topic {topic} (40 answers)"
