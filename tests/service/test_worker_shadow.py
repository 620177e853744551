"""Shadow canary: a candidate store judges every record beside the served one, on its own topic only
(real Kafka broker and MongoDB-protocol server)."""
from __future__ import annotations

import pytest
from pymongo import AsyncMongoClient

from model_store.generations import promote, rollback
from model_store.serving.store import open_store
from tests.service.test_worker import acknowledged, read_to_end
from tests.support.plants import versioned_store
from tests.support.worker_helpers import metric, plant_documents, running_worker, unique, values, wait_for, worker_settings

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_the_candidate_judges_every_record_on_the_shadow_topic_and_never_alarms(
        delivery, mongo_server, kafka_server, store_copy, small_plant, tmp_path) -> None:
    name = unique("shadow-" + delivery.split("-")[0])
    candidate = versioned_store(store_copy, tmp_path / "candidate", "noisy-candidate", line_scale=1e-3)
    served = open_store(store_copy, verify=False).model_version
    settings = worker_settings(mongo_server, kafka_server, store_copy, name, candidate_store=candidate,
                               kafka_shadow_topic=f"{name}.shadow", delivery=delivery,
                               kafka_positions_topic=f"{name}.positions")
    documents = plant_documents(small_plant, 300, name)
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            await wait_for(lambda: metric(worker, "moldwatch_shadow_active") == 1, timeout=60)
            collection = client[settings.mongo_database][settings.mongo_collection]
            await collection.insert_many(documents[:100])
            await wait_for(acknowledged(worker, 100), timeout=60)
            # Promoted mid-stream: the candidate directory is consumed, shadowing stops, and the
            # worker serves it from its next poll on; nothing is lost or repeated meanwhile.
            promote(store_copy, candidate, reason="test")
            await wait_for(lambda: worker.model_version == "noisy-candidate"
                           and metric(worker, "moldwatch_shadow_active") == 0, timeout=60)
            await collection.insert_many(documents[100:200])
            await wait_for(acknowledged(worker, 200), timeout=60)
            assert rollback(store_copy, reason="test") == served  # and back, one command
            await wait_for(lambda: worker.model_version == served, timeout=60)
            await collection.insert_many(documents[200:])
            await wait_for(acknowledged(worker, 300), timeout=60)
    finally:
        await client.close()
    verdicts = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    shadow = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_shadow_topic))
    alarms = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_alarms_topic))
    ids = [d[small_plant.schema.record_id] for d in documents]
    assert sorted(v["record_id"] for v in verdicts) == sorted(ids)  # one verdict each, through promotion and rollback
    assert {v["model_version"] for v in verdicts} == {served, "noisy-candidate"}
    first = {v["record_id"] for v in verdicts if v["model_version"] == served}
    assert first >= set(ids[:100])  # judged by the served store before the promotion
    assert {v["record_id"] for v in shadow} >= set(ids[:100])  # and by the candidate, in the shadow
    assert all(v["model_version"] == "noisy-candidate" and "source" in v for v in shadow)
    shadow_alarms = {v["record_id"] for v in shadow if v["anomaly"]}
    assert len(shadow_alarms) > 0.8 * len(shadow)  # the noisy candidate alarms on nearly everything...
    served_alarms = {v["record_id"] for v in verdicts if v["anomaly"] and v["model_version"] != "noisy-candidate"}
    before = {a["record_id"] for a in alarms if a["model_version"] != "noisy-candidate"}
    assert before == served_alarms  # ...and none of its shadow alarms reached the alarms topic:
    promoted = {v["record_id"] for v in verdicts if v["anomaly"] and v["model_version"] == "noisy-candidate"}
    assert {a["record_id"] for a in alarms if a["model_version"] == "noisy-candidate"} == promoted  # only once served
    assert metric(worker, "moldwatch_shadow_verdicts_total") == len(shadow)
    assert metric(worker, "moldwatch_shadow_anomalies_total") == len(shadow_alarms)


def test_shadow_settings_go_together_and_never_share_an_alarm_topic(tmp_path) -> None:
    from service.config import WorkerSettings

    with pytest.raises(ValueError, match="candidate_store and kafka_shadow_topic go together"):
        WorkerSettings(_env_file=None, candidate_store=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="must differ from the verdicts, alarms and dead-letters topics"):
        WorkerSettings(_env_file=None, candidate_store=tmp_path, kafka_shadow_topic="moldwatch.alarms")  # type: ignore[call-arg]
