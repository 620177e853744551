"""Scale-out: three workers consume one raw-records topic as a consumer group; one is SIGKILLed and
later restarted. Nothing is lost, duplicates stay bounded by the batches in flight (none with
exactly-once), and the group's committed offsets reach the end of every partition while the
workers run (no survivor is stuck committing partitions it no longer owns)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.sources.kafka import encode_document
from tests.support.worker_helpers import plant_documents, unique, worker_settings
from tests.support.worker_process import WorkerProcess, read_to_end, verdict_id, wait_for_ids

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(900)]

PARTITIONS = 6
RECORDS = 6_000


async def group_offsets_reach_end(bootstrap: str, group: str, topic: str, timeout: float = 180.0) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(group)
            # A partition no record went to (keys hash elsewhere) has nothing to commit: end offset 0.
            at = {tp: committed[tp].offset if committed.get(tp) else 0 for tp in partitions}
            behind = {tp: (at[tp], ends[tp]) for tp in partitions if at[tp] < ends[tp]}
            if not behind:
                return
            assert time.monotonic() < deadline, f"committed offsets behind the end: {behind}"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await admin.close()


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_three_workers_one_killed_and_restarted(delivery, kafka_server, mongo_server, trained_store, small_plant, tmp_path):
    name = unique("group-" + delivery.split("-")[0])
    bootstrap = kafka_server.bootstrap_servers
    batch_size = 200
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, source="kafka", start_from="beginning",
                               delivery=delivery, batch_size=batch_size, in_flight_batches=4, queue_size=2 * batch_size,
                               checkpoint_interval_s=0.2)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.kafka_records_topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    schema = small_plant.schema
    documents = plant_documents(small_plant, RECORDS, name)
    ids = {d[schema.record_id] for d in documents}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()

    async def produce(docs: list[dict]) -> None:
        for doc in docs:
            await producer.send(settings.kafka_records_topic, encode_document(doc), key=str(doc[schema.facility]).encode())
        await producer.flush()

    workers = [WorkerProcess(settings.model_copy(update={"worker_name": f"{name}-{i}"}), tmp_path / f"w{i}.log")
               for i in range(3)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await worker.wait_ready(180)
        third = RECORDS // 3
        await produce(documents[:third])
        await wait_for_ids(bootstrap, [settings.kafka_verdicts_topic], verdict_id,
                           {d[schema.record_id] for d in documents[: third // 2]}, timeout=180)
        workers[0].kill()  # mid-stream: its partitions go to the survivors
        await produce(documents[third: 2 * third])
        workers[0] = WorkerProcess(workers[0].settings, tmp_path / "w0.log").start()  # rejoins: another rebalance
        await produce(documents[2 * third:])
        await workers[0].wait_ready(180)
        await wait_for_ids(bootstrap, [settings.kafka_verdicts_topic], verdict_id, ids, timeout=300)
        await group_offsets_reach_end(bootstrap, settings.kafka_group_id, settings.kafka_records_topic)
        codes = [worker.terminate() for worker in workers]
        assert codes == [0, 0, 0], [w.tail() for w in workers]
    finally:
        for worker in workers:
            worker.kill()
        await producer.stop()
    verdicts = Counter(verdict_id(m) for m in await read_to_end(bootstrap, settings.kafka_verdicts_topic))
    assert set(verdicts) == ids
    duplicates = sum(n - 1 for n in verdicts.values())
    if delivery == "exactly-once":
        assert duplicates == 0
    else:
        # At most what the killed worker had read but not committed: its queue, the batch being
        # scored and the batches in flight (survivors commit on revocation: nothing of theirs).
        assert duplicates <= settings.queue_size + (settings.in_flight_batches + 1) * batch_size, duplicates
    print(f"{delivery}: {RECORDS} records, {duplicates} duplicate verdicts")
