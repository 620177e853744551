"""``moldwatch run`` as a real process for fault tests (SIGKILL, restarts, several workers), and
readers that check what reached Kafka (read-committed, up to the end offsets)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from service.config import WorkerSettings
from service.devservers import free_port


def worker_env(settings: WorkerSettings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLDWATCH_")}
    for key, value in settings.model_dump().items():
        if value is not None and not key.endswith("password"):
            env[f"MOLDWATCH_{key.upper()}"] = str(value)
    env.update(extra)
    return env


class WorkerProcess:
    """One ``moldwatch run`` with its own HTTP port and log file."""

    def __init__(self, settings: WorkerSettings, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"http_port": self.port})
        self.log_path = log_path
        self.env = worker_env(self.settings, **env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moldwatch"), "run", "--log-format", "json"],
                                         cwd=self.log_path.parent, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def readyz(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).json()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready):
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            assert time.monotonic() < deadline, f"worker not ready in {timeout} s\n{self.tail()}"
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def read_to_end(bootstrap: str, topic: str, committed: bool = True, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic`` up to its end offsets *now* (read-committed by default)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                isolation_level="read_committed" if committed else "read_uncommitted")
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()  # the consumer's own knows only subscribed topics
        partitions = [TopicPartition(topic, p) for p in (metadata.partitions_for_topic(topic) or set())]
        if not partitions:
            return []
        consumer.assign(partitions)
        seek = consumer.seek_to_beginning(*partitions)
        if asyncio.iscoroutine(seek):  # a coroutine in older aiokafka releases
            await seek
        # With read_committed, end_offsets is the last stable offset: what a consumer can read now.
        ends = await consumer.end_offsets(partitions)
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end offsets in {timeout} s"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                messages.extend(batch)
        return messages
    finally:
        await consumer.stop()


async def wait_for_ids(bootstrap: str, topics: list[str], key: Any, wanted: set[str], timeout: float = 120.0) -> list[Any]:
    """Read ``topics`` to their end until every id in ``wanted`` (``key(message)``) is there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            messages = [m for t in topics for m in await read_to_end(bootstrap, t)]
        except KafkaError as exc:  # the test's own reader, e.g. a broker just resumed from SIGSTOP: read again
            assert time.monotonic() < deadline, f"topics unreadable after {timeout} s: {exc}"
            await asyncio.sleep(0.5)
            continue
        seen = {key(m) for m in messages}
        if wanted <= seen:
            return messages
        assert time.monotonic() < deadline, f"{len(wanted - seen)} of {len(wanted)} ids missing after {timeout} s"
        await asyncio.sleep(0.5)


def verdict_id(message: Any) -> str:
    return json.loads(message.value)["record_id"]


def order_violations(messages: list[Any], rank: dict[str, int]) -> list[str]:
    """Per facility (key), the first copy of each verdict must appear in insertion order."""
    by_key: dict[bytes, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        record = verdict_id(message)
        if record in seen:
            continue
        seen.add(record)
        by_key[message.key].append(rank[record])
    return [f"{key!r}: {ranks[i - 1]} before {ranks[i]}" for key, ranks in by_key.items()
            for i in range(1, len(ranks)) if ranks[i] < ranks[i - 1]]


async def wait_metric(worker: WorkerProcess, name: str, at_least: float, timeout: float = 120.0) -> None:
    """Until the worker's /metrics shows ``name`` (summed) >= ``at_least``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await asyncio.to_thread(worker.metrics)
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
        if total >= at_least:
            return
        assert loop.time() < deadline, f"{name} < {at_least} after {timeout} s\n{worker.tail()}"
        await asyncio.sleep(0.05)


async def kill_loop(settings: WorkerSettings, collection: Any, documents: list[dict[str, Any]], ids: set[str],
                    bootstrap: str, log: Path, kills: int, timeout: float = 240.0, **env: str) -> Counter[str]:
    """Insert ``documents`` in ``kills + 1`` chunks into ``collection``, SIGKILL the worker while
    each of the first ``kills`` chunks is in flight and start it again; wait until every id has a
    verdict, stop the worker (it must exit 0) and return the verdicts per record id, read to the
    end of the verdicts topic (read_committed)."""
    worker = WorkerProcess(settings, log, **env).start()
    killed = 0
    try:
        await worker.wait_ready()
        chunk = len(documents) // (kills + 1)
        for start in range(0, len(documents), chunk):
            await collection.insert_many(documents[start:start + chunk])
            if killed < kills:
                # Kill while the chunk is being scored and published: some of it is in flight.
                await wait_metric(worker, "moldwatch_verdicts_total", 1)
                worker.kill()
                killed += 1
                worker = WorkerProcess(settings, log, **env).start()
                await worker.wait_ready()
        await wait_for_ids(bootstrap, [settings.kafka_verdicts_topic], verdict_id, ids, timeout=timeout)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.kill()
    assert killed == kills
    return Counter(verdict_id(m) for m in await read_to_end(bootstrap, settings.kafka_verdicts_topic))

