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
import logging
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.live import Live

from model_store.errors import MoldwatchError
from service.cli_errors import console, fail, installed, require_train_extra, user_errors
from service.demo_view import LiveStats, render, summary_line

SUMMARY_EVERY_S = 5.0  # off a terminal: one plain line this often
# The local servers the demo starts are the source tree's (service/devservers: Java launchers, Maven
# POMs); an installed wheel, such as the worker image's, leaves them out (pyproject.toml).
NO_DEVSERVERS = ("moldwatch demo runs the local Kafka and MongoDB servers of a source checkout (service/devservers), "
                 "which an installed moldwatch does not include: run it from a clone of the repository, after "
                 "deploy/local/setup.sh")

# A quick plant: ~1 minute of training on 2 cores, yet every maker, several settings per item and
# all three model families.
DEMO_PLANT = dict(seed=3, days=14, facilities=20, items=40, shots=160_000)
DEMO_TRAINING = {"model.epochs": "25", "model.memae_min_rows": "6000"}


def quiet_noise(log_path: Path | None) -> None:
    """Third-party chatter off the screen: the worker's and libraries' logs go to ``log_path``
    (JSON lines), TensorFlow's C++ banners are switched off before it is imported, and Python
    warnings become log records. ``None``: everything on stderr (``--verbose``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR banners
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and the oneDNN notice printed at import
    from service.logs import configure_logging

    if log_path is None:
        configure_logging("info", "console", stream=sys.stderr)
        return
    configure_logging("info", "json", stream=open(log_path, "a", encoding="utf-8", buffering=1))  # noqa: SIM115 - lives as long as the demo
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for name in ("aiokafka", "kafka", "tensorflow", "absl", "pymongo", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).propagate = True  # to the file handler on the root logger, never the terminal


def settings_line(settings: Any, log_path: Path | None) -> str:
    """The worker's settings in one line (the full set is in the log file, or with --verbose)."""
    topics = f"{settings.kafka_verdicts_topic}, {settings.kafka_alarms_topic}, {settings.kafka_dead_letters_topic}"
    logs = f" · logs {log_path}" if log_path else ""
    return (f"worker: {settings.mongo_database}.{settings.mongo_collection} on {settings.mongo_uri.split('/?')[0]} -> Kafka "
            f"{settings.kafka_bootstrap_servers} ({topics}) · store {settings.store}{logs}")


def prepare_store(workdir: Path, retrain: bool) -> tuple[Any, Path]:
    """Simulate the plant and train its store once; later runs reuse the store."""
    from model_store.canonical import canonical_lots, canonical_records
    from model_store.config import TrainingConfig
    from model_store.errors import StoreError
    from model_store.serving.store import open_store
    from model_store.simulate import SimulationConfig, simulate
    from model_store.store_training import train_store
    from service.progress import progress_bar

    plant = simulate(SimulationConfig(**DEMO_PLANT))
    store = workdir / "store"
    if not retrain and (store / "manifest.json").is_file():
        try:
            open_store(store, verify=False)  # the format only: the worker verifies every hash when it loads it
        except StoreError as exc:  # e.g. written by an older moldwatch: train a fresh one
            console.print(f"Cannot reuse {store} ({exc}); training a new one.")
            retrain = True
    if retrain or not (store / "manifest.json").is_file():
        console.print(f"Simulated {len(plant.records):,} shots of history; training the store (2-3 minutes on 2 cores)...")
        records = canonical_records(plant.records, plant.schema)
        lots = canonical_lots(plant.lots, plant.schema)
        with progress_bar(console) as progress:
            train_store(records, lots, plant.schema, store, TrainingConfig().with_overrides(DEMO_TRAINING), progress=progress)
    else:
        console.print(f"Reusing the store in {store} (--retrain to train again).")
    from model_store.report_coverage import coverage_line

    console.print(f"What the store can judge: {coverage_line(open_store(store, verify=False).raw)} "
                  f"(which and why: {store / 'report.html'})", highlight=False, soft_wrap=True)
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
            doc[timestamp_field] = datetime.now(UTC)
            batch.append(doc)
            stats.broken_inserted += int(broken)
            owed -= 1
        if batch:
            await collection.insert_many(batch, ordered=False)
            stats.inserted += len(batch)
        await asyncio.sleep(tick)


async def follow(bootstrap: str, topics: list[str], stats: LiveStats, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    # earliest: the broker is fresh each run, so everything on it is this run's (and nothing is
    # missed between the topic's creation and this consumer's first fetch).
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
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


class DemoError(MoldwatchError):
    """The demo cannot go on (its worker stopped before it listened); one line for the user."""


async def until_listening(worker: Any, worker_task: asyncio.Task[Any], timeout: float = 60.0) -> None:
    """Until the worker reads the change stream; a worker that stops first (a busy HTTP port, a
    store it cannot load) ends the wait at once with its own one-line reason, not a timeout."""
    listening = asyncio.ensure_future(worker.wait_listening(timeout))
    done, _ = await asyncio.wait({listening, worker_task}, return_when=asyncio.FIRST_COMPLETED)
    if listening in done:
        listening.result()
        return
    listening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listening
    error = worker_task.exception() if not worker_task.cancelled() else None
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror  # "cannot serve HTTP on host:port: Address already in use", no "[Errno 98]"
    else:
        reason = str(error) if error is not None else f"exit status {worker_task.result()!r}"
    raise DemoError(f"the worker stopped before it listened: {reason} (another moldwatch on this port? try --http-port)")


DEMO_MONGO_HEAP = "2g"


async def run_demo(workdir: Path, rate: float, duration: float, http_port: int, retrain: bool, defect_boost: float,
                   broken_share: float, log_path: Path | None = None, started: float | None = None) -> LiveStats:
    from pymongo import AsyncMongoClient

    from service.config import WorkerSettings
    from service.devservers import KafkaServer, MongoServer
    from service.run_command import serve
    from service.worker import Worker

    # Our own handlers, not KeyboardInterrupt: a demo started from a script in the background
    # inherits SIGINT as *ignored*, and SIGTERM (systemd, CI) should stop it just as cleanly.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    stats = LiveStats(started=started or time.monotonic())
    # 2 GB: the in-memory MongoDB keeps every inserted shot and its oplog entry; 512 MB ran out
    # (inserts slowed, then stalled) after ~55k shots, ~5 minutes at the default rate
    kafka, mongo = KafkaServer(), MongoServer(heap=DEMO_MONGO_HEAP)
    # The servers start while the plant is simulated (and the store loaded or trained): a second
    # run shows verdicts within seconds, not after one step then the other.
    servers = asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(mongo.start))
    try:
        plant, store = await asyncio.to_thread(prepare_store, workdir, retrain)
        with console.status("Starting local Kafka and MongoDB-protocol servers..."):
            await servers
    except BaseException:
        await asyncio.gather(servers, return_exceptions=True)
        await asyncio.gather(asyncio.to_thread(kafka.close), asyncio.to_thread(mongo.close))
        raise
    if interrupted.is_set():
        await asyncio.gather(asyncio.to_thread(kafka.close), asyncio.to_thread(mongo.close))
        return stats
    stop = asyncio.Event()
    worker: Worker | None = None
    tasks: list[asyncio.Task] = []
    try:
        settings = WorkerSettings(
            mongo_uri=mongo.uri, mongo_database="plant", mongo_collection="shots",
            kafka_bootstrap_servers=kafka.bootstrap_servers, store=store, http_host="127.0.0.1", http_port=http_port,
            log_format="json", log_level="info",
        )
        console.print(settings_line(settings, log_path), highlight=False, soft_wrap=True)
        worker = Worker(settings)
        worker_task = asyncio.create_task(serve(worker))  # with its HTTP server: /metrics, /readyz
        await until_listening(worker, worker_task)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        client = AsyncMongoClient(mongo.uri)
        collection = client["plant"]["shots"]
        documents = live_documents(plant, defect_boost, broken_share, seed=DEMO_PLANT["seed"])
        topics = [settings.kafka_verdicts_topic, settings.kafka_dead_letters_topic]
        tasks = [asyncio.create_task(follow(kafka.bootstrap_servers, topics, stats, stop)),
                 asyncio.create_task(feed(collection, documents, rate, stats, stop, plant.schema.timestamp))]
        deadline = time.monotonic() + duration if duration > 0 else math.inf

        def latencies() -> dict[float, float]:
            return worker.metrics.latencies.quantiles((0.5, 0.99))

        def running() -> bool:
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]  # not None: checked on the line above
            return time.monotonic() < deadline and not worker_task.done() and not interrupted.is_set()

        if console.is_terminal and sys.stdout.isatty():  # `demo > file` or `demo | tee`: the plain lines below
            with Live(console=console, refresh_per_second=4, transient=False, vertical_overflow="crop") as live:
                while running():
                    live.update(render(stats, metrics_url, latencies(), worker.model_version or "-", console.size.height,
                                       console.size.width))
                    await asyncio.sleep(0.25)
        else:  # piped or in a log: plain lines, no redraws
            next_line = time.monotonic() + SUMMARY_EVERY_S
            first_seen = False
            while running():
                if not first_seen and stats.first_verdict_s is not None:
                    first_seen = True
                    print(f"first verdict after {stats.first_verdict_s:.1f} s", flush=True)
                if time.monotonic() >= next_line:
                    print(summary_line(stats, latencies()), flush=True)
                    next_line += SUMMARY_EVERY_S
                await asyncio.sleep(0.25)
            print(summary_line(stats, latencies()), flush=True)
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


def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the simulated plant's store is kept between runs."),
    rate: float = typer.Option(200.0, help="Shots per second inserted into MongoDB."),
    duration: float = typer.Option(0.0, help="Stop after this many seconds (0: run until Ctrl-C)."),
    http_port: int = typer.Option(8000, help="Worker's HTTP port (/metrics, /readyz, /score)."),
    retrain: bool = typer.Option(False, help="Train the store again even if one exists."),
    defect_boost: float = typer.Option(3.0, help="Multiply every defect hazard: a bad day makes a livelier demo."),
    broken_share: float = typer.Option(0.002, help="Share of inserted records that are broken (to dead letters)."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show the worker's and libraries' logs here instead of in WORKDIR/worker.log."),
) -> None:
    """Live demo: simulate, train, start local Kafka + MongoDB, stream shots through the worker, watch verdicts."""
    require_train_extra("demo")  # it trains (or at least imports training) before any server starts
    if not installed("service.devservers"):
        fail(NO_DEVSERVERS)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = None if verbose else workdir / "worker.log"
    quiet_noise(log_path)
    try:
        stats = asyncio.run(run_demo(workdir, rate, duration, http_port, retrain, defect_boost, broken_share, log_path, started))
    except KeyboardInterrupt:
        console.print("Stopped; servers shut down.")
        return
    unanswered = stats.inserted - stats.verdicts - stats.dead_letters
    console.print(
        f"Demo finished: {stats.inserted:,} shots inserted, {stats.verdicts:,} verdicts, {stats.anomalies:,} anomalies, "
        f"{stats.dead_letters} dead letters" + (f", {unanswered:,} without an outcome yet when it stopped" if unanswered > 0 else "")
        + "; servers shut down.", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to a CLI app (called by service.cli)."""
    app.command()(user_errors(demo))


__all__ = ["register", "demo", "LiveStats", "render"]
