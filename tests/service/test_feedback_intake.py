"""Operator feedback against the real servers: POST /feedback joins an answer to the verdict the
worker published, keeps it on the feedback topic before answering 201, and sends every refused
answer (duplicate, unknown record, late, invalid) to the dead-letter topic with its reason."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pymongo import AsyncMongoClient

from service.http_auth import token_line
from tests.support.worker_helpers import (
    metric,
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    worker_settings,
)

LEAD = "mw_lead-" + "l" * 38
SCORER = "mw_scorer-" + "s" * 36


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_feedback_is_joined_kept_and_every_refusal_dead_lettered(mongo_server, kafka_server, trained_store,
                                                                       small_plant, tmp_path: Path):
    name = unique("feedback")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(token_line("line-3-lead", ["feedback"], LEAD) + "\n" + token_line("mes", ["score"], SCORER) + "\n")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, kafka_feedback_topic=f"{name}.feedback",
                               http_tokens_file=tokens)
    documents = plant_documents(small_plant, 20, name)
    async with running_worker(settings) as worker:
        async with AsyncMongoClient(mongo_server.uri) as mongo:
            await mongo[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 20))
        answered = verdicts[3]
        now = datetime.now(UTC)

        def answer(**overrides) -> dict:
            return {"record_id": answered["record_id"], "label": "false_alarm", "operator": "kim",
                    "at": now.isoformat(), "idempotency_key": "k-1", **overrides}

        lead = {"authorization": f"Bearer {LEAD}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=30) as client:
            kept = await client.post("/feedback", json=answer(), headers=lead)
            duplicate = await client.post("/feedback", json=answer(label="defect"), headers=lead)
            changed_mind = await client.post("/feedback", json=answer(label="defect", idempotency_key="k-2"), headers=lead)
            unknown = await client.post("/feedback", json=answer(record_id="no-such-shot", idempotency_key="k-3"),
                                        headers=lead)
            late = await client.post("/feedback", json=answer(at=(now - timedelta(days=8)).isoformat(),
                                                              idempotency_key="k-4"), headers=lead)
            invalid = await client.post("/feedback", json=answer(label="broken", idempotency_key="k-5"), headers=lead)
            wrong_scope = await client.post("/feedback", json=answer(idempotency_key="k-6"),
                                            headers={"authorization": f"Bearer {SCORER}"})
            huge = await client.post("/feedback", content=b'{"operator": "' + b"x" * 2_000_000 + b'"}', headers=lead)
            deep = await client.post("/feedback", content=b"[" * 100 + b"]" * 100, headers=lead)
        statuses = [r.status_code for r in (kept, duplicate, changed_mind, unknown, late, invalid, wrong_scope, huge, deep)]
        assert statuses == [201, 409, 201, 404, 422, 422, 403, 413, 422], [r.text[:200] for r in (duplicate, unknown)]
        feedback = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_feedback_topic, 2))
        dead = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_dead_letters_topic, 4))
        assert metric(worker, "moldwatch_feedback_total") == 2
        assert metric(worker, "moldwatch_feedback_refused_total", reason="feedback_duplicate") == 1
    assert [f["label"] for f in feedback] == ["false_alarm", "defect"]
    first = feedback[0]
    assert first == kept.json()
    assert first["verdict"] == {k: answered[k] for k in ("model_version", "group_id", "threshold", "score", "anomaly",
                                                         "scored_at", "facility", "item")}
    assert first["token"] == "line-3-lead" and first["via"] == "http" and first["operator"] == "kim"
    assert sorted(d["reason"] for d in dead) == ["feedback_duplicate", "feedback_invalid", "feedback_late",
                                                 "feedback_unknown_record"]
    invalid_letter = next(d for d in dead if d["reason"] == "feedback_invalid")
    assert invalid_letter["error"].startswith("label") and invalid_letter["document"]["label"] == "broken"
    assert json.loads(json.dumps(dead))  # every dead letter is plain JSON
    assert LEAD not in json.dumps(feedback) + json.dumps(dead)


async def test_a_worker_without_a_feedback_topic_says_so(trained_store):
    from tests.service.test_http import serving_offline

    async with (
        serving_offline(trained_store) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=10) as client,
    ):
        response = await client.post("/feedback", json={})
    assert response.status_code == 404 and response.json()["reason"] == "feedback_not_configured"
    assert "MOLDWATCH_KAFKA_FEEDBACK_TOPIC" in response.json()["error"]


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_answers_arriving_on_kafka_are_judged_like_posted_ones(mongo_server, kafka_server, trained_store,
                                                                      small_plant):
    from aiokafka import AIOKafkaProducer

    name = unique("feedback-in")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, kafka_feedback_topic=f"{name}.feedback",
                               kafka_feedback_in_topic=f"{name}.feedback-in")
    documents = plant_documents(small_plant, 5, name)
    async with running_worker(settings) as worker:
        async with AsyncMongoClient(mongo_server.uri) as mongo:
            await mongo[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 5))
        answer = {"record_id": verdicts[0]["record_id"], "label": "defect", "operator": "lee",
                  "at": datetime.now(UTC).isoformat(), "idempotency_key": "mes-1"}
        producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for value in (json.dumps(answer).encode(), json.dumps(answer).encode(), b"\xff not json", b"[" * 5000):
                await producer.send_and_wait(settings.kafka_feedback_in_topic, value)
        finally:
            await producer.stop()
        kept = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_feedback_topic, 1))
        dead = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_dead_letters_topic, 3))
        assert metric(worker, "moldwatch_feedback_total", label="defect") == 1
    assert len(kept) == 1 and kept[0]["via"] == "kafka" and kept[0]["token"] is None
    assert kept[0]["verdict"]["group_id"] == verdicts[0]["group_id"]
    assert sorted(d["reason"] for d in dead) == ["feedback_duplicate", "feedback_invalid", "feedback_invalid"]
    assert {d["source"]["topic"] for d in dead} == {settings.kafka_feedback_in_topic}
