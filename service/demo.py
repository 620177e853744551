"""``moldwatch demo``: the whole system live on this machine.

simulate a plant -> train a store -> start local Kafka and MongoDB-protocol servers -> start the
worker -> insert shots into MongoDB at a realistic rate (a bad day: more defects, a few broken
records) -> follow the verdicts on Kafka in a live terminal view. Ctrl-C (or --duration) stops
the feed, drains the worker, and stops the servers: nothing is left running.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from service.cli import app, console, user_errors

# A quick plant: ~1 minute of training on 2 cores, yet every maker, several settings per item and
# all three model families.
DEMO_PLANT = dict(seed=3, days=14, facilities=20, items=40, shots=160_000)
DEMO_TRAINING = {"model.epochs": "25", "model.memae_min_rows": "6000"}


@dataclass
class LiveStats:
    """What the terminal view shows; updated from the verdicts topic."""

    started: float = field(default_factory=time.monotonic)
    inserted: int = 0
    broken_inserted: int = 0
    verdicts: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    per_facility: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    paths: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recent_alarms: deque = field(default_factory=lambda: deque(maxlen=6))
    arrivals: deque = field(default_factory=lambda: deque(maxlen=5000))

    def observe(self, verdict: dict[str, Any]) -> None:
        self.verdicts += 1
        self.arrivals.append(time.monotonic())
        row = self.per_facility[verdict["facility"]]
        row[0] += 1
        self.paths[verdict["resolution"]] += 1
        if verdict["anomaly"]:
            self.anomalies += 1
            row[1] += 1
            top = ", ".join(f["field"] for f in verdict["top_features"][:2])
            self.recent_alarms.append(f"{verdict['facility']} {verdict['item']} score {verdict['score']:.2f} ({top})")

    def rate(self) -> float:
        now = time.monotonic()
        recent = [t for t in self.arrivals if now - t <= 5]
        return len(recent) / 5.0


def render(stats: LiveStats, metrics_url: str, latencies: dict[float, float], model_version: str) -> Panel:
    table = Table(title="Verdicts per facility", expand=True)
    for name in ("facility", "verdicts", "anomalies", "anomaly rate"):
        table.add_column(name, justify="right" if name != "facility" else "left")
    for facility in sorted(stats.per_facility):
        total, bad = stats.per_facility[facility]
        style = "bold red" if total >= 20 and bad / total > 0.05 else ""
        table.add_row(facility, f"{total:,}", f"{bad:,}", f"{bad / total:.1%}" if total else "-", style=style)
    p50, p99 = (latencies.get(q, math.nan) * 1000 for q in (0.5, 0.99))
    elapsed = time.monotonic() - stats.started
    summary = (
        f"[b]{stats.verdicts:,}[/] verdicts ({stats.rate():.0f}/s) · [b red]{stats.anomalies:,}[/] anomalies "
        f"({stats.anomalies / max(stats.verdicts, 1):.1%}) · {stats.dead_letters} dead letters "
        f"(of {stats.broken_inserted} broken records) · inserted {stats.inserted:,} in {elapsed:.0f}s\n"
        f"end-to-end latency p50 {p50:.0f} ms · p99 {p99:.0f} ms · paths "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.paths.items()))
        + f"\nmetrics: {metrics_url}   model version: {model_version}   Ctrl-C to stop"
    )
    alarms = "\n".join(stats.recent_alarms) or "(none yet)"
    return Panel(Group(summary, table, Panel(alarms, title="latest alarms")), title="moldwatch live demo")


def prepare_store(workdir: Path, retrain: bool) -> tuple[Any, Path]:
    """Simulate the plant and train its store once; later runs reuse the store."""
    from model_store.config import TrainingConfig
    from model_store.schema import canonical_lots, canonical_records
    from model_store.simulate import SimulationConfig, simulate
    from model_store.training import train_store

    from service.progress import progress_bar

    from model_store.errors import StoreError
    from model_store.store import open_store

    plant = simulate(SimulationConfig(**DEMO_PLANT))
    store = workdir / "store"
    if not retrain and (store / "manifest.json").is_file():
        try:
            open_store(store)
        except StoreError as exc:  # e.g. written by an older moldwatch: train a fresh one
            console.print(f"Cannot reuse {store} ({exc}); training a new one.")
            retrain = True
    if retrain or not (store / "manifest.json").is_file():
        console.print(f"Simulated {len(plant.records):,} shots of history; training the store (about a minute)...")
        records = canonical_records(plant.records, plant.schema)
        lots = canonical_lots(plant.lots, plant.schema)
        with progress_bar(console) as progress:
            train_store(records, lots, plant.schema, store, TrainingConfig().with_overrides(DEMO_TRAINING), progress=progress)
    else:
        console.print(f"Reusing the store in {store} (--retrain to train again).")
    return plant, store


def live_documents(plant: Any, defect_boost: float, broken_share: float, seed: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """The next production day's shots as MongoDB documents, in time order; a few broken ones."""
    from model_store.simulate import as_documents, continue_plant

    day = 0
    rng = random.Random(seed)
    schema = plant.schema
    numeric = list(schema.numeric_fields)
    while True:
        later = continue_plant(plant, days=1, defect_boost=defect_boost, first_day=plant.n_days + day)
        frame = later.records.sort_values(schema.timestamp, kind="stable")
        for doc in as_documents(frame):
            broken = rng.random() < broken_share
            if broken:  # what a flaky MES export does: text in a numeric field, or no facility
                field_name = rng.choice([f for f in numeric if f in doc] or [schema.facility])
                doc[field_name] = "ERR" if field_name != schema.facility else None
            yield doc, broken
        day += 1


async def feed(collection: Any, documents: Iterator[tuple[dict[str, Any], bool]], rate: float, stats: LiveStats,
               stop: asyncio.Event, timestamp_field: str) -> None:
    """Insert at ``rate`` shots/s, stamping each with the time it is 'made' (now)."""
    tick = 0.05
    per_tick = rate * tick
    owed = 0.0
    while not stop.is_set():
        owed += per_tick
        batch = []
        while owed >= 1:
            doc, broken = next(documents)
            doc[timestamp_field] = datetime.now(timezone.utc)
            batch.append(doc)
            stats.broken_inserted += int(broken)
            owed -= 1
        if batch:
            await collection.insert_many(batch, ordered=False)
            stats.inserted += len(batch)
        await asyncio.sleep(tick)


async def follow(bootstrap: str, topics: list[str], stats: LiveStats, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, messages in batches.items():
                for message in messages:
                    if tp.topic == topics[0]:
                        stats.observe(json.loads(message.value))
                    else:
                        stats.dead_letters += 1
    finally:
        await consumer.stop()


async def run_demo(workdir: Path, rate: float, duration: float, http_port: int, retrain: bool, defect_boost: float,
                   broken_share: float) -> LiveStats:
    from pymongo import AsyncMongoClient

    from service.config import WorkerSettings
    from service.devservers import KafkaServer, MongoServer
    from service.worker import Worker

    # Our own handlers, not KeyboardInterrupt: a demo started from a script in the background
    # inherits SIGINT as *ignored*, and SIGTERM (systemd, CI) should stop it just as cleanly.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    plant, store = await asyncio.to_thread(prepare_store, workdir, retrain)
    if interrupted.is_set():
        return LiveStats()
    stats = LiveStats()
    with console.status("Starting local Kafka and MongoDB-protocol servers..."):
        kafka, mongo = KafkaServer(), MongoServer()
        await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(mongo.start))
    stop = asyncio.Event()
    worker: Worker | None = None
    tasks: list[asyncio.Task] = []
    try:
        settings = WorkerSettings(
            mongo_uri=mongo.uri, mongo_database="plant", mongo_collection="shots",
            kafka_bootstrap_servers=kafka.bootstrap_servers, store=store, http_host="127.0.0.1", http_port=http_port,
            log_format="json", log_level="warning",
        )
        worker = Worker(settings)
        worker_task = asyncio.create_task(worker.run())
        await worker.wait_listening(60)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        client = AsyncMongoClient(mongo.uri)
        collection = client["plant"]["shots"]
        documents = live_documents(plant, defect_boost, broken_share, seed=DEMO_PLANT["seed"])
        topics = [settings.kafka_verdicts_topic, settings.kafka_dead_letters_topic]
        tasks = [asyncio.create_task(follow(kafka.bootstrap_servers, topics, stats, stop)),
                 asyncio.create_task(feed(collection, documents, rate, stats, stop, plant.schema.timestamp))]
        deadline = time.monotonic() + duration if duration > 0 else math.inf
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline and not worker_task.done() and not interrupted.is_set():
                for task in tasks:
                    if task.done() and task.exception():
                        raise task.exception()  # type: ignore[misc]
                live.update(render(stats, metrics_url, worker.metrics.latencies.quantiles((0.5, 0.99)), worker.model_version or "-"))
                await asyncio.sleep(0.25)
        if interrupted.is_set():
            console.print("Stopping: draining the worker and shutting the servers down...")
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        if worker is not None:
            worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker_task, 60)
        await asyncio.gather(asyncio.to_thread(kafka.close), asyncio.to_thread(mongo.close))
    return stats


@app.command()
@user_errors
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the simulated plant's store is kept between runs."),
    rate: float = typer.Option(200.0, help="Shots per second inserted into MongoDB."),
    duration: float = typer.Option(0.0, help="Stop after this many seconds (0: run until Ctrl-C)."),
    http_port: int = typer.Option(8000, help="Worker's HTTP port (/metrics, /readyz, /score)."),
    retrain: bool = typer.Option(False, help="Train the store again even if one exists."),
    defect_boost: float = typer.Option(3.0, help="Multiply every defect hazard: a bad day makes a livelier demo."),
    broken_share: float = typer.Option(0.002, help="Share of inserted records that are broken (to dead letters)."),
) -> None:
    """Live demo: simulate, train, start local Kafka + MongoDB, stream shots through the worker, watch verdicts."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        stats = asyncio.run(run_demo(workdir, rate, duration, http_port, retrain, defect_boost, broken_share))
    except KeyboardInterrupt:
        console.print("Stopped; servers shut down.")
        return
    console.print(
        f"Demo finished: {stats.verdicts:,} verdicts, {stats.anomalies:,} anomalies, {stats.dead_letters} dead letters; "
        "servers shut down."
    )


__all__ = ["demo", "LiveStats", "render"]
