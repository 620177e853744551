"""A flood of bad HTTP credentials against a worker that streams: does the verdict stream notice?

Three phases of ``--seconds`` each against the real local servers, records inserted at a paced
``--rate`` per second by a separate process (bench/soak.py's inserter):

1. quiet      no HTTP traffic (baseline)
2. flood      a separate process sends POST /score with wrong, missing, scope-less and oversized
              credentials as fast as the server answers, over ``--connections`` kept-alive sockets
3. quiet      again: drift of the machine between phases shows as the difference of 1 and 3

Per phase: verdicts acknowledged per second and the p50 / p99 latency (the inserter stamps each
record with its insert time, so record timestamp -> Kafka ack is insert -> ack; from the worker's
exact latency window). The flood phase is reported as a ratio against the
mean of the two quiet phases (same run, same machine). Also: attempts made, how many were
accepted (must be 0) and how many were answered 429 (the address's failure budget used up).
The worker runs in this process with HTTP and a tokens file, as ``moldwatch run`` serves it.

    .venv/bin/python bench/http_flood.py                  # 3 x 30 s at 500 records/s
    .venv/bin/python bench/http_flood.py --store DIR      # a trained store instead of training one
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result
from bench.stream import code_state, log, train

SCRIPT = Path(__file__).resolve()
SOAK = SCRIPT.parent / "soak.py"
GOOD_TOKEN = "mw_bench-" + "g" * 37


async def attack(port: int, connections: int) -> None:
    """Child: bad credentials until SIGTERM; then one JSON line of counts by status."""
    headers = [f"authorization: Bearer mw_guess-{i}\r\n" for i in range(8)] + ["", "authorization: x\r\n",
                                                                               "authorization: " + "y" * 600 + "\r\n"]
    counts: dict[int, int] = {}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def one(offset: int) -> None:
        from tests.support.raw_http import post_score

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while not stop.is_set():
            status = await post_score(reader, writer, headers[i % len(headers)])
            i += 1
            counts[status] = counts.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(one(c) for c in range(connections)))
    print(json.dumps({str(k): v for k, v in counts.items()}), flush=True)


async def phases(opts: argparse.Namespace, store: Path) -> dict[str, Any]:
    from service.config import WorkerSettings
    from service.devservers import KafkaServer, MongoServer
    from service.http_auth import token_line
    from service.run_command import serve
    from service.worker import Worker

    kafka = await asyncio.to_thread(KafkaServer().start)
    mongo = await asyncio.to_thread(MongoServer().start)
    name = f"flood-{uuid.uuid4().hex[:8]}"
    tokens = Path(f"/tmp/{name}-tokens.txt")
    tokens.write_text(token_line("bench", ["score"], GOOD_TOKEN) + "\n")
    settings = WorkerSettings(  # type: ignore[call-arg]  # pydantic-settings fills the other fields from defaults and the environment
        _env_file=None, worker_name=name, mongo_uri=mongo.uri, mongo_database="plant", mongo_collection="shots",
        kafka_bootstrap_servers=kafka.bootstrap_servers, kafka_verdicts_topic=f"{name}.verdicts",
        kafka_alarms_topic=f"{name}.alarms", kafka_dead_letters_topic=f"{name}.dead-letters", store=store,
        http_host="127.0.0.1", http_port=0, http_tokens_file=tokens, log_level="warning")
    worker = Worker(settings)
    task = asyncio.create_task(serve(worker))
    results: list[dict[str, Any]] = []
    try:
        await worker.wait_listening(60)
        while worker.http_port is None:
            await asyncio.sleep(0.05)
        for phase in ("quiet", "flood", "quiet"):
            log(f"http_flood: phase {len(results) + 1} ({phase}), {opts.seconds:.0f} s at {opts.rate}/s")
            results.append(await one_phase(opts, worker, mongo.uri, phase))
            log(f"http_flood:   {json.dumps({k: v for k, v in results[-1].items() if k != 'attacker'})}")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
        await asyncio.to_thread(mongo.close)
        await asyncio.to_thread(kafka.close)
        tokens.unlink(missing_ok=True)
    quiet = [r for r in results if r["phase"] == "quiet"]
    flood = next(r for r in results if r["phase"] == "flood")
    base_rate = statistics.mean(r["verdicts_per_s"] for r in quiet)
    base_p99 = statistics.mean(r["p99_ms"] for r in quiet)
    attacker = flood["attacker"]
    accepted = sum(v for k, v in attacker.items() if int(k) < 400)
    return {
        "rate_per_s": opts.rate,
        "seconds_per_phase": opts.seconds,
        "connections": opts.connections,
        "phases": results,
        "flood_attempts": sum(attacker.values()),
        "flood_attempts_per_s": sum(attacker.values()) / flood["seconds"],
        "flood_accepted": accepted,
        "flood_answered_429": attacker.get("429", 0),
        "verdict_rate_flood_over_quiet": flood["verdicts_per_s"] / base_rate,
        "p99_flood_over_quiet": flood["p99_ms"] / base_p99,
        "quiet_phases_p99_ratio": quiet[1]["p99_ms"] / quiet[0]["p99_ms"],
    }


async def one_phase(opts: argparse.Namespace, worker: Any, uri: str, phase: str) -> dict[str, Any]:
    metrics = worker.metrics
    before = counter(metrics.verdicts)
    metrics.latencies.clear()
    attacker = None
    if phase == "flood":
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--attack", "--port", str(worker.http_port), "--connections",
            str(opts.connections), stdout=asyncio.subprocess.PIPE)
    inserter = await asyncio.create_subprocess_exec(
        sys.executable, str(SOAK), "--child", "--uri", uri, "--rate", str(opts.rate), "--minutes", str(opts.seconds / 60),
        stdout=asyncio.subprocess.PIPE)
    inserting = asyncio.create_task(inserter.communicate())
    first = None  # the rate counts from the first verdict of the phase, not from the inserter's start-up
    while not inserting.done():
        if first is None and counter(metrics.verdicts) > before:
            first = (time.monotonic(), counter(metrics.verdicts))
        await asyncio.sleep(0.02)
    reply = json.loads((await inserting)[0].decode().strip().splitlines()[-1])
    deadline = time.monotonic() + 60
    target = before + reply["inserted"]
    while counter(metrics.verdicts) < target and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert first is not None, "no verdict during the phase"
    elapsed = time.monotonic() - first[0]
    before = first[1]
    counts: dict[str, int] = {}
    if attacker is not None:
        attacker.send_signal(signal.SIGTERM)
        counts = json.loads((await attacker.communicate())[0].decode().strip().splitlines()[-1])
    window = sorted(metrics.latencies.values)
    return {
        "phase": phase,
        "seconds": elapsed,
        "inserted": reply["inserted"],
        "verdicts": counter(metrics.verdicts) - before,
        "verdicts_per_s": (counter(metrics.verdicts) - before) / elapsed,
        "p50_ms": window[len(window) // 2] * 1000,
        "p99_ms": window[min(len(window) - 1, int(0.99 * len(window)))] * 1000,
        "attacker": counts,
    }


def counter(metric: Any) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rate", type=int, default=500, help="records per second")
    parser.add_argument("--connections", type=int, default=8, help="the attacker's kept-alive sockets")
    parser.add_argument("--store", type=Path, help="a trained store (default: train the small plant's store)")
    parser.add_argument("--out", default="http_flood")
    parser.add_argument("--attack", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.attack:
        asyncio.run(attack(opts.port, opts.connections))
        return
    store = opts.store
    trained = store is None
    if store is None:
        store = Path(f"/tmp/http-flood-store-{os.getpid()}")
        train(store)
    load_before = os.getloadavg()
    result = asyncio.run(phases(opts, store))
    result |= {"code": code_state(), "load_before": load_before, "store": "small plant, trained here" if trained else str(store)}
    path = write_result(opts.out, result)
    log(f"http_flood -> {path}: verdict rate flood/quiet "
        f"{result['verdict_rate_flood_over_quiet']:.3f}, p99 flood/quiet {result['p99_flood_over_quiet']:.2f} "
        f"(quiet/quiet {result['quiet_phases_p99_ratio']:.2f}), {result['flood_attempts']:,} attempts, "
        f"{result['flood_accepted']} accepted")


if __name__ == "__main__":
    main()
