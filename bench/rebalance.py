"""Exactly-once under repeated kills and rebalances: duplicates seen by a read_committed reader.

Three ``moldwatch run`` processes consume one 6-partition raw-records topic as one consumer group
with ``--delivery exactly-once`` while records are produced at a steady ``--rate``. Then
``--cycles`` times: SIGKILL one worker (in turn), let the survivors take its partitions over for
``--pause-s``, restart it (another rebalance), wait until it is ready and verdicts moved on. At the
end every record must have exactly one verdict on the verdicts topic (read_committed, up to the
end offsets). Each cycle is two rebalances under load; the survivors' revocations are where a
batch scored after the revocation began used to be committed without its offsets.

Then the bound on hidden verdicts after a kill: a producer with the worker's transaction timeout
opens a transaction on every verdict partition and is SIGKILLed; how long until a read_committed
reader sees every verdict (the open transaction holds the partitions' last stable offset until
the broker aborts it: the transaction timeout, 15 s, plus the broker's abort check interval,
10 s by default; a restart of the same worker aborts it at once).

    .venv/bin/python bench/rebalance.py                      # 20 cycles
    .venv/bin/python bench/rebalance.py --cycles 5 --store DIR
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result
from bench.stream import code_state, later_plant, log, raw_documents, train

PARTITIONS = 6


async def run(opts: argparse.Namespace, store: Path) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from service.config import WorkerSettings
    from service.devservers import KafkaServer, free_port
    from service.sources.kafka import encode_document
    from tests.support.worker_process import WorkerProcess, read_to_end, verdict_id

    kafka = await asyncio.to_thread(KafkaServer().start)
    name = f"rebalance-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=name))
    dead = f"127.0.0.1:{free_port()}"  # --source kafka never talks to MongoDB
    settings = WorkerSettings(  # type: ignore[call-arg]  # pydantic-settings fills the other fields from defaults and the environment
        _env_file=None, worker_name=name, source="kafka", delivery="exactly-once", start_from="beginning",
        mongo_uri=f"mongodb://{dead}/?directConnection=true", kafka_bootstrap_servers=kafka.bootstrap_servers,
        kafka_records_topic=f"{name}.records", kafka_verdicts_topic=f"{name}.verdicts",
        kafka_alarms_topic=f"{name}.alarms", kafka_dead_letters_topic=f"{name}.dead-letters",
        kafka_group_id=f"{name}-group", store=store, batch_size=200, queue_size=400, in_flight_batches=4,
        checkpoint_interval_s=0.2, http_host="127.0.0.1", ready_cache_s=0.0, ready_timeout_s=3.0)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(settings.kafka_records_topic, num_partitions=PARTITIONS, replication_factor=1)])
    await admin.close()
    plant = later_plant(20_000)
    templates = raw_documents(plant)
    id_field, facility = plant.schema.record_id, plant.schema.facility
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    produced: list[str] = []
    stop_producing = asyncio.Event()

    async def produce() -> None:
        t0 = time.monotonic()
        while not stop_producing.is_set():
            due = int((time.monotonic() - t0) * opts.rate) + 1
            while len(produced) < due:
                doc = dict(templates[len(produced) % len(templates)])
                doc[id_field] = f"{name}-{len(produced):07d}"
                await producer.send(settings.kafka_records_topic, encode_document(doc), key=str(doc[facility]).encode())
                produced.append(doc[id_field])
            await asyncio.sleep(0.01)
        await producer.flush()

    workers = [WorkerProcess(settings.model_copy(update={"worker_name": f"{name}-{i}"}), workdir / f"w{i}.log")
               for i in range(3)]
    cycles: list[dict[str, Any]] = []
    rng = random.Random(opts.seed)
    started = time.monotonic()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await worker.wait_ready(300)
        producing = asyncio.create_task(produce())
        for cycle in range(opts.cycles):
            victim = cycle % len(workers)
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # kill at a random moment of the stream
            workers[victim].kill()
            killed_at = time.monotonic()
            await asyncio.sleep(opts.pause_s)
            workers[victim] = WorkerProcess(workers[victim].settings, workdir / f"w{victim}.log").start()
            await workers[victim].wait_ready(300)
            cycles.append({"cycle": cycle + 1, "killed": victim, "back_ready_after_s": round(time.monotonic() - killed_at, 1),
                           "produced": len(produced)})
            log(f"rebalance: cycle {cycle + 1}/{opts.cycles}: worker {victim} killed and back in "
                f"{cycles[-1]['back_ready_after_s']} s, {len(produced):,} records produced")
        # Visibility: SIGKILL a worker mid-stream, stop producing at once and leave it dead. Its
        # open transaction holds the last stable offset of the verdict partitions it wrote to
        # until the broker aborts it (transaction timeout + the broker's abort check interval):
        # how long until a read_committed reader can read up to the high watermark everywhere.
        # A worker's transaction lasts milliseconds (score, send, commit), so a random SIGKILL
        # rarely lands inside one (none in 8 tries on this machine). The worst case is measured
        # deterministically: a producer with the worker's transactional settings opens a
        # transaction on the verdicts topic, writes to every partition, and is SIGKILLed; the
        # workers keep streaming meanwhile.
        stop_producing.set()
        await producing
        visible_after_s = await dead_transaction_visibility(kafka.bootstrap_servers, settings)
        log(f"rebalance: a producer SIGKILLed inside a transaction: every verdict readable with read_committed "
            f"after {visible_after_s:.1f} s (transaction timeout {settings.kafka_transaction_timeout_ms / 1000:g} s)")
        wanted = set(produced)
        deadline = time.monotonic() + 300
        while True:
            messages = await read_to_end(kafka.bootstrap_servers, settings.kafka_verdicts_topic)
            verdicts = Counter(verdict_id(m) for m in messages)
            if wanted <= set(verdicts) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        codes = [worker.terminate() for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
        await producer.stop()
        await asyncio.to_thread(kafka.close)
    duplicates = {record: n for record, n in verdicts.items() if n > 1}
    details: dict[str, list[dict[str, Any]]] = {}
    for message in messages:  # where each copy of a duplicated verdict sits, and what it answered
        record = verdict_id(message)
        if (record in duplicates and len(details) < 30) or record in details:
            verdict = json.loads(message.value)
            details.setdefault(record, []).append({
                "verdict_partition": message.partition, "verdict_offset": message.offset,
                "source": verdict.get("source"), "supersedes": verdict.get("supersedes"),
                "scored_at": verdict.get("scored_at")})
    missing = sorted(wanted - set(verdicts))
    return {
        "cycles": opts.cycles,
        "rate_per_s": opts.rate,
        "pause_s": opts.pause_s,
        "records": len(produced),
        "verdicts": sum(verdicts.values()),
        "duplicate_records": len(duplicates),
        "duplicate_verdicts": sum(n - 1 for n in duplicates.values()),
        "duplicate_examples": sorted(duplicates)[:20],
        "duplicate_details": details,
        "missing": len(missing),
        "missing_examples": missing[:20],
        "visible_after_a_producer_killed_inside_a_transaction_s": visible_after_s,
        "transaction_timeout_ms": settings.kafka_transaction_timeout_ms,
        "exit_codes": codes,
        "seconds": time.monotonic() - started,
        "per_cycle": cycles,
        "target": "0 duplicates and 0 missing over >= 20 kill-and-rebalance cycles",
        "target_met": not duplicates and not missing and opts.cycles >= 20,
        "logs": str(workdir),
    }


DEAD_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer
async def main(bootstrap, topic, timeout_ms):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="bench-dead-producer",
                                transaction_timeout_ms=timeout_ms, enable_idempotence=True, acks="all")
    await producer.start()
    await producer.begin_transaction()
    for partition in (await producer.partitions_for(topic)):
        await (await producer.send(topic, b"{}", partition=partition))
    print("open", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def dead_transaction_visibility(bootstrap: str, settings: Any) -> float:
    """Seconds from the SIGKILL of a producer holding an open transaction on every verdict
    partition until a read_committed reader can read to the high watermark everywhere."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEAD_PRODUCER, bootstrap, settings.kafka_verdicts_topic,
        str(settings.kafka_transaction_timeout_ms), stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    assert line.strip() == b"open", line
    assert await until_all_visible(bootstrap, settings.kafka_verdicts_topic, timeout=0.0) != 0.0, "nothing held open"
    child.kill()
    killed_at = time.monotonic()
    await child.wait()
    await until_all_visible(bootstrap, settings.kafka_verdicts_topic, timeout=120.0)
    return time.monotonic() - killed_at


async def until_all_visible(bootstrap: str, topic: str, timeout: float = 120.0) -> float:
    """Seconds from now until the read_committed end offsets (last stable offsets) of every
    partition of ``topic`` equal its high watermarks, and no transaction remains open."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    started = time.monotonic()
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed")
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_uncommitted")
    await committed.start()
    await uncommitted.start()
    try:
        metadata = await committed._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic) or ())]
        while True:
            stable = await committed.end_offsets(partitions)
            high = await uncommitted.end_offsets(partitions)
            if all(stable[tp] >= high[tp] for tp in partitions):
                return 0.0 if timeout == 0.0 else time.monotonic() - started
            if time.monotonic() - started >= timeout:
                return float("inf")
            await asyncio.sleep(0.2)
    finally:
        await committed.stop()
        await uncommitted.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rate", type=int, default=300, help="records per second produced throughout")
    parser.add_argument("--pause-s", type=float, default=3.0, help="how long a killed worker stays down")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", type=Path, help="a trained store (default: train the small plant's store)")
    parser.add_argument("--out", default="rebalance")
    opts = parser.parse_args()
    store = opts.store
    if store is None:
        store = Path(f"/tmp/rebalance-store-{os.getpid()}")
        train(store)
    load_before = os.getloadavg()
    result = asyncio.run(run(opts, store))
    result |= {"code": code_state(), "load_before": load_before}
    path = write_result(opts.out, result)
    log(f"rebalance -> {path}: {result['records']:,} records, {result['duplicate_verdicts']} duplicate verdicts, "
        f"{result['missing']} missing over {opts.cycles} cycles")


if __name__ == "__main__":
    main()
