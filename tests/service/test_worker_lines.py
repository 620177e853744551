"""Feedback lines in the running worker (real Kafka broker and MongoDB-protocol server): a line book
published while records stream is applied from the next poll on, a broken one is refused while the
last good one holds, a revert takes effect the same way; alarms follow the lines."""
from __future__ import annotations

import pytest
from pymongo import AsyncMongoClient

from model_store.canonical import canonical_records
from model_store.serving.feedback_lines import LineBounds
from model_store.serving.line_book import LineBook, PartLine
from model_store.serving.store import open_store
from service.line_book_file import publish
from tests.service.test_worker import acknowledged, read_to_end
from tests.support.worker_helpers import metric, plant_documents, running_worker, unique, values, wait_for, worker_settings

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def test_a_published_line_book_moves_the_alarms_and_a_broken_one_is_refused(
        mongo_server, kafka_server, store_copy, small_plant, tmp_path) -> None:
    name = unique("lines")
    lines = tmp_path / "lines.json"  # absent at start: every part at its trained line
    settings = worker_settings(mongo_server, kafka_server, store_copy, name, lines=lines, store_poll_s=0.2)
    model_version = open_store(store_copy, verify=False).model_version
    documents = plant_documents(small_plant, 900, name)
    canonical = canonical_records(small_plant.records, small_plant.schema)
    parts = sorted({(str(f), str(i)) for f, i in zip(canonical["facility"], canonical["item"])})
    raised = LineBook(1, model_version, "2026-12-05T10:00:00.000+00:00", "test: every part at 2", LineBounds(),
                      tuple(PartLine(f, i, 2.0, "ceiling", "test") for f, i in parts))
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            collection = client[settings.mongo_database][settings.mongo_collection]
            assert metric(worker, "moldwatch_feedback_lines_version") == 0
            await collection.insert_many(documents[:300])
            await wait_for(acknowledged(worker, 300), timeout=60)

            publish(lines, raised)
            await wait_for(lambda: metric(worker, "moldwatch_feedback_lines_version") == 1, timeout=30)
            assert metric(worker, "moldwatch_feedback_line", facility=parts[0][0], item=parts[0][1]) == 2.0
            await collection.insert_many(documents[300:600])
            await wait_for(acknowledged(worker, 600), timeout=60)

            lines.write_text('{"lines_format": 1, "version": 9, "change": "x", "parts": [{"facility": "F01"}]}')
            await wait_for(lambda: metric(worker, "moldwatch_feedback_lines_loads_total", outcome="failed") >= 1,
                           timeout=30)
            assert metric(worker, "moldwatch_feedback_lines_version") == 1  # the last good book holds

            publish(lines, LineBook(2, model_version, "2026-12-05T11:00:00.000+00:00", "revert to version 0"))
            await wait_for(lambda: metric(worker, "moldwatch_feedback_lines_version") == 2, timeout=30)
            await collection.insert_many(documents[600:])
            await wait_for(acknowledged(worker, 900), timeout=60)
            silenced = metric(worker, "moldwatch_feedback_line_silenced_total")
    finally:
        await client.close()
    verdicts = {v["record_id"]: v for v in values(await read_to_end(kafka_server.bootstrap_servers,
                                                                    settings.kafka_verdicts_topic))}
    alarms = {a["record_id"] for a in values(await read_to_end(kafka_server.bootstrap_servers,
                                                               settings.kafka_alarms_topic))}
    ids = [d[small_plant.schema.record_id] for d in documents]
    assert sorted(verdicts) == sorted(ids)
    judged = [verdicts[i] for i in ids if verdicts[i]["resolution"] != "unscorable"]
    first, middle, last = ([v for v in judged if v["record_id"] in set(ids[a:b])] for a, b in ((0, 300), (300, 600),
                                                                                              (600, 900)))
    for verdict in first + last:  # before the book, and after the revert: the trained line
        assert verdict["line"] == 1.0 and verdict["line_version"] is None and verdict["anomaly"] == (verdict["score"] > 1)
    for verdict in middle:
        assert verdict["line"] == 2.0 and verdict["line_version"] == 1 and verdict["anomaly"] == (verdict["score"] > 2)
    assert {v["record_id"] for v in verdicts.values() if v["anomaly"]} == alarms  # alarm consumers see the lines
    assert silenced == sum(1 for v in middle if 1.0 < v["score"] <= 2.0)
    assert any(v["score"] > 1.0 for v in first + last)  # the plant alarms at all in this stretch
