"""Soak: the worker at a steady 1,000 records/s for 10 minutes against the real local servers.

Proves that a long run neither leaks nor slows down:

- RSS of the worker process, sampled every ``--sample-s``; growth is measured from the end of the
  warm-up (``--warmup-minutes``: model cache filled, allocator settled) to the end of the run.
  Target < 5 %.
- p99 end-to-end latency (record timestamp = insert time -> Kafka ack) per sample window, from the
  worker's exact latency window; "stable" means the last third's median p99 is within 1.5x of the
  first post-warm-up third's. Also: every record got exactly one verdict.

The inserter is a separate process (paced inserts, ``--rate`` per second) that also deletes
records older than a minute, so the in-memory MongoDB-protocol server holds a bounded collection;
the worker runs in this process with its default settings (as ``moldwatch run`` would). The test
server's oplog still grows in its heap: at 1,000 records/s it saturates within ~6 minutes (one
core at 100 % in its GC, the worker idle). ``--source kafka`` soaks the worker on a raw-records
topic instead (records produced at the same pace, as the MongoDB Kafka source connector writes them).

    .venv/bin/python bench/soak.py                 # 10 minutes at 1,000 records/s
    .venv/bin/python bench/soak.py --minutes 2     # a shorter run (the JSON says so)
    .venv/bin/python bench/soak.py --source kafka  # the worker alone: records from a Kafka topic
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result
from bench.stream import RunningWorker, code_state, later_plant, log, raw_documents, train

SCRIPT = Path(__file__).resolve()
TARGETS = {"rss_growth_after_warmup": 0.05, "p99_last_over_first_third": 1.5}


def child_insert(opts: argparse.Namespace) -> None:
    """Paced inserts for ``--minutes`` at ``--rate``; prints one JSON line when done."""
    import pymongo

    plant = later_plant(60_000)
    templates = raw_documents(plant)
    ts_field, id_field = plant.schema.timestamp, plant.schema.record_id
    client: Any = pymongo.MongoClient(opts.uri, tz_aware=True)
    collection = client.plant.shots
    total = int(opts.rate * opts.minutes * 60)
    t0 = time.time() + 0.1
    i = 0
    last_delete = t0
    while i < total:
        now = time.time()
        due = min(total, int((now - t0) * opts.rate) + 1)
        if due <= i:
            time.sleep(max(0.0, t0 + i / opts.rate - now))
            continue
        stamp = datetime.now(UTC)
        chunk = []
        for n in range(i, due):
            doc = dict(templates[n % len(templates)])
            doc[id_field] = f"soak-{n:08d}"
            doc[ts_field] = stamp
            chunk.append(doc)
        collection.insert_many(chunk, ordered=True)
        i = due
        if now - last_delete > 10:  # keep the in-memory server's collection bounded
            collection.delete_many({ts_field: {"$lt": stamp - timedelta(seconds=60)}})
            last_delete = now
    print(json.dumps({"inserted": total, "seconds": time.time() - t0}), flush=True)
    client.close()


def child_produce(opts: argparse.Namespace) -> None:
    """``--source kafka``: paced records into the raw-records topic, as the MongoDB Kafka source
    connector would write them; prints one JSON line when done."""
    from aiokafka import AIOKafkaProducer

    from service.sources.kafka import encode_document

    plant = later_plant(60_000)
    templates = raw_documents(plant)
    ts_field, id_field, facility = plant.schema.timestamp, plant.schema.record_id, plant.schema.facility

    async def produce() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=opts.uri, acks="all", linger_ms=5)
        await producer.start()
        total = int(opts.rate * opts.minutes * 60)
        t0 = time.time() + 0.1
        i = 0
        try:
            while i < total:
                now = time.time()
                due = min(total, int((now - t0) * opts.rate) + 1)
                if due <= i:
                    await asyncio.sleep(max(0.0, t0 + i / opts.rate - now))
                    continue
                stamp = datetime.now(UTC)
                for n in range(i, due):
                    doc = dict(templates[n % len(templates)])
                    doc[id_field] = f"soak-{n:08d}"
                    doc[ts_field] = stamp
                    await producer.send(opts.topic, encode_document(doc), key=str(doc[facility]).encode())
                i = due
            await producer.flush()
        finally:
            await producer.stop()
        return total

    started = time.time()
    total = asyncio.run(produce())
    print(json.dumps({"inserted": total, "seconds": time.time() - started}), flush=True)


async def soak(opts: argparse.Namespace, store: Path) -> dict[str, Any]:
    import service.devservers.mongo as mongo_module
    from service.config import WorkerSettings
    from service.devservers import KafkaServer, MongoServer

    # 600k documents flow through the server's oplog in 10 minutes: more heap than the tests need.
    mongo_module.JAVA_OPTS = [o for o in mongo_module.JAVA_OPTS if not o.startswith("-Xmx")] + ["-Xmx3g"]
    kafka = await asyncio.to_thread(KafkaServer().start)
    mongo = await asyncio.to_thread(MongoServer().start)
    name = f"soak-{uuid.uuid4().hex[:8]}"
    settings = WorkerSettings(  # type: ignore[call-arg]  # pydantic-settings fills the other fields from defaults and the environment
        _env_file=None, worker_name=name, mongo_uri=mongo.uri, mongo_database="plant", mongo_collection="shots",
        kafka_bootstrap_servers=kafka.bootstrap_servers, kafka_verdicts_topic=f"{name}.verdicts",
        kafka_alarms_topic=f"{name}.alarms", kafka_dead_letters_topic=f"{name}.dead-letters", store=store,
        http_enabled=False, log_level="warning", delivery=opts.delivery, kafka_positions_topic=f"{name}.positions",
        source=opts.source, kafka_records_topic=f"{name}.records", kafka_group_id=f"{name}-group",
        start_from="beginning")
    samples: list[dict[str, Any]] = []
    if opts.source == "kafka":  # the topic must exist before the worker subscribes (metadata refresh is slow)
        from service.topics import ensure_topics

        await ensure_topics(settings, [settings.kafka_records_topic])
    try:
        # Without the per-record latency split: its lists (two floats per verdict, never read
        # here) live in this process and grew its RSS by ~80 bytes per record, +19.6 % over the
        # first 10-minute soak (bench/results/soak.json of 0d9e93b): the bench's memory, not the worker's.
        async with RunningWorker(settings, split_latency=False) as running:
            child = (["--child", "--uri", mongo.uri] if opts.source == "mongo" else
                     ["--child-produce", "--uri", kafka.bootstrap_servers, "--topic", settings.kafka_records_topic])
            inserter = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), *child, "--rate", str(opts.rate), "--minutes", str(opts.minutes),
                stdout=asyncio.subprocess.PIPE)
            started = time.monotonic()
            metrics = running.worker.metrics
            metrics.latencies.clear()
            done = asyncio.create_task(inserter.communicate())
            while not done.done():
                await asyncio.wait({done}, timeout=opts.sample_s)
                window = list(metrics.latencies.values)
                metrics.latencies.clear()
                elapsed = time.monotonic() - started
                q = sorted(window)
                samples.append({
                    "t_s": round(elapsed, 1),
                    "rss_bytes": own_rss_bytes(),  # the worker's process only, not the inserter child
                    "acked": len(window),
                    "p50_ms": q[len(q) // 2] * 1000 if q else None,
                    "p99_ms": q[min(len(q) - 1, int(0.99 * len(q)))] * 1000 if q else None,
                })
                log(f"soak: {elapsed:6.0f}s rss {samples[-1]['rss_bytes'] / 1e6:7.1f} MB  acked {len(window):6d}  "
                    f"p99 {samples[-1]['p99_ms'] or float('nan'):7.1f} ms")
            reply = json.loads((await done)[0].decode().strip().splitlines()[-1])
            total = reply["inserted"]
            deadline = time.monotonic() + 120
            while counter(metrics.verdicts) + counter(metrics.dead_letters) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            verdicts, dead = counter(metrics.verdicts), counter(metrics.dead_letters)
    finally:
        await asyncio.to_thread(mongo.close)
        await asyncio.to_thread(kafka.close)
    warm = [s for s in samples if s["t_s"] >= opts.warmup_minutes * 60]
    rss_start, rss_end = warm[0]["rss_bytes"], warm[-1]["rss_bytes"]
    p99s = [s["p99_ms"] for s in warm if s["p99_ms"] is not None]
    third = max(1, len(p99s) // 3)
    first, last = statistics.median(p99s[:third]), statistics.median(p99s[-third:])
    return {
        "minutes": opts.minutes,
        "full_length": opts.minutes >= 10,
        "rate_per_s": opts.rate,
        "delivery": opts.delivery,
        "source": opts.source,
        "records": total,
        "verdicts": verdicts,
        "dead_letters": dead,
        "every_record_one_outcome": verdicts + dead == total,
        "warmup_minutes": opts.warmup_minutes,
        "rss_after_warmup_bytes": rss_start,
        "rss_at_end_bytes": rss_end,
        "rss_growth_after_warmup": (rss_end - rss_start) / rss_start,
        "p99_ms_first_third_median": first,
        "p99_ms_last_third_median": last,
        "p99_last_over_first_third": last / first if first else None,
        "p99_ms_max_window": max(p99s),
        "targets": TARGETS,
        "target_met": {"rss": (rss_end - rss_start) / rss_start < TARGETS["rss_growth_after_warmup"],
                       "p99": bool(first) and last / first <= TARGETS["p99_last_over_first_third"]},
        "samples": samples,
    }


def own_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def counter(metric: Any) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="records per second")
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 20%% of --minutes, at most 2")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--delivery", choices=["at-least-once", "exactly-once"], default="at-least-once")
    parser.add_argument("--store", type=Path, help="a trained store (default: train the small plant's store)")
    parser.add_argument("--out", default="soak")
    parser.add_argument("--source", choices=["mongo", "kafka"], default="mongo",
                        help="kafka: records produced to a raw-records topic (the in-memory MongoDB test server's "
                        "oplog outgrows its heap at 1,000 records/s within minutes)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child_insert(opts)
        return
    if opts.child_produce:
        child_produce(opts)
        return
    # SIGTERM: exit through Python, so the local servers are stopped (atexit) rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.warmup_minutes is None:
        opts.warmup_minutes = min(2.0, opts.minutes * 0.2)
    store = opts.store
    if store is None:
        import tempfile

        store = Path(tempfile.mkdtemp(prefix="moldwatch-soak-")) / "store"
        log("soak: training the small plant's store (in a child process)")
        # Not in this process: the worker's RSS is what the soak measures, and training leaves
        # TensorFlow (~1 GB) behind, which would dilute the growth figure several times over.
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=train, args=(store,))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"soak: training the store failed (exit {child.exitcode})")
    result = asyncio.run(soak(opts, store))
    result["code"] = code_state()
    path = write_result(opts.out, result)
    log(f"soak: RSS growth after warm-up {result['rss_growth_after_warmup']:+.2%}, p99 first/last third "
        f"{result['p99_ms_first_third_median']:.1f}/{result['p99_ms_last_third_median']:.1f} ms -> {path}")


if __name__ == "__main__":
    main()
