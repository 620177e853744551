"""The local real servers: each is reached over a socket with its real client."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from pymongo import AsyncMongoClient

from service.devservers import (
    DevServer,
    DevServerError,
    KafkaServer,
    MongoServer,
    PostgresServer,
    cache_dir,
    free_port,
    promtool_check_config,
)
from tests.support.servers import PrometheusFactory


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


# --- Kafka -------------------------------------------------------------------


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"devservers-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < count:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
            values.append(msg.value)
        return values
    finally:
        await consumer.stop()


@pytest.mark.servers
async def test_kafka_produce_consume_stop_and_restart(kafka_server: KafkaServer) -> None:
    topic = f"devservers-{uuid.uuid4().hex[:8]}"  # auto-created on first use
    await _produce(kafka_server.bootstrap_servers, topic, b"before restart")
    assert await _consume(kafka_server.bootstrap_servers, topic, 1) == [b"before restart"]

    port = kafka_server.port
    kafka_server.stop()
    kafka_server.stop()  # idempotent
    assert not kafka_server.is_running
    assert not _port_open(kafka_server.host, port)

    kafka_server.start()
    assert kafka_server.port == port
    await _produce(kafka_server.bootstrap_servers, topic, b"after restart")
    # Same log dir: the message from before the restart is still there.
    assert await _consume(kafka_server.bootstrap_servers, topic, 2) == [b"before restart", b"after restart"]


# --- MongoDB protocol ----------------------------------------------------------


@pytest.mark.servers
async def test_mongo_insert_find_and_server_version(mongo_server: MongoServer) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client.devservers.things
        await coll.insert_one({"_id": "a", "value": 1})
        assert await coll.find_one({"_id": "a"}) == {"_id": "a", "value": 1}
        build = await client.admin.command("buildInfo")
        assert build["version"] == "4.4.0"
        hello = await client.admin.command("hello")
        assert hello["maxWireVersion"] == 9 and hello["isWritablePrimary"] is True
        assert "operationTime" in await client.admin.command("ping")
    finally:
        await client.close()


@pytest.mark.servers
async def test_mongo_change_stream_update_lookup_and_resume(mongo_server: MongoServer) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client.devservers[f"stream_{uuid.uuid4().hex[:8]}"]
        async with await coll.watch(full_document="updateLookup") as stream:
            await coll.insert_one({"_id": 1, "state": "new"})
            inserted = await asyncio.wait_for(stream.next(), timeout=10)
            await coll.update_one({"_id": 1}, {"$set": {"state": "done"}})
            updated = await asyncio.wait_for(stream.next(), timeout=10)
        assert inserted["operationType"] == "insert"
        assert inserted["fullDocument"] == {"_id": 1, "state": "new"}
        assert updated["operationType"] == "update"
        assert updated["fullDocument"] == {"_id": 1, "state": "done"}  # looked up

        # Resuming after the insert's token replays the update.
        async with await coll.watch(full_document="updateLookup", resume_after=inserted["_id"]) as resumed:
            again = await asyncio.wait_for(resumed.next(), timeout=10)
        assert again["_id"] == updated["_id"]
        assert again["fullDocument"] == {"_id": 1, "state": "done"}
    finally:
        await client.close()


@pytest.mark.servers
async def test_mongo_idle_change_stream_does_not_spin(mongo_server: MongoServer) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client.devservers[f"idle_{uuid.uuid4().hex[:8]}"]
        async with await coll.watch() as stream:
            polls = 0
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                assert await stream.try_next() is None
                polls += 1
        # Each empty getMore is held back ~50 ms: about 20 polls a second, not thousands.
        assert polls <= 30, polls
    finally:
        await client.close()


@pytest.mark.servers
async def test_mongo_stop_and_restart_same_port(mongo_server: MongoServer) -> None:
    port = mongo_server.port
    mongo_server.stop()
    assert not _port_open(mongo_server.host, port)
    mongo_server.start()
    assert mongo_server.port == port
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        assert (await client.admin.command("ping"))["ok"] == 1.0
    finally:
        await client.close()


# --- PostgreSQL ----------------------------------------------------------------


@pytest.mark.servers
async def test_postgres_create_insert_select(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    async with await psycopg.AsyncConnection.connect(postgres_server.dsn) as conn:
        table = f"devservers_{uuid.uuid4().hex[:8]}"
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        await conn.execute(f"INSERT INTO {table} VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
        cur = await conn.execute(f"SELECT id, name FROM {table} ORDER BY id")
        assert await cur.fetchall() == [(1, "one"), (2, "two")]


# --- Prometheus ----------------------------------------------------------------


@pytest.fixture
def metrics_target() -> Iterator[str]:
    """A tiny prometheus_client HTTP server with one gauge, on a free port."""
    registry = CollectorRegistry()
    Gauge("devservers_test_value", "a value for Prometheus to scrape", registry=registry).set(42)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.servers
def test_prometheus_scrapes_target_and_answers_queries(
    prometheus_factory: PrometheusFactory, metrics_target: str
) -> None:
    prom = prometheus_factory([metrics_target], scrape_interval_s=1.0)
    result = prom.wait_for("devservers_test_value", timeout_s=30)
    assert result[0]["metric"]["instance"] == metrics_target
    assert result[0]["value"][1] == "42"
    assert prom.query('up{job="moldwatch"}')[0]["value"][1] == "1"


def test_promtool_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: x\n    static_configs: [{targets: ['127.0.0.1:1']}]\n"
    )
    assert "SUCCESS" in promtool_check_config(good)
    bad = tmp_path / "bad.yml"
    bad.write_text("global:\n  scrape_interval: not-a-duration\n")
    with pytest.raises(DevServerError, match="promtool check config failed"):
        promtool_check_config(bad)


# --- process plumbing (no real server needed) ----------------------------------


class _ShellServer(DevServer):
    """A stand-in whose probe never succeeds, to check start-up failures."""

    name = "shell"

    def __init__(self, script: str) -> None:
        super().__init__(start_timeout_s=1.0)
        self.script = script

    def command(self) -> list[str]:
        return ["sh", "-c", self.script]

    def probe(self) -> bool:
        return False


def test_start_timeout_error_has_log_tail_and_kills_process() -> None:
    server = _ShellServer("echo something went wrong; sleep 60")
    try:
        with pytest.raises(DevServerError, match="not ready after 1s") as err:
            server.start()
        assert "something went wrong" in str(err.value)
        assert not server.is_running
    finally:
        server.close()
    assert not server.workdir.exists()


def test_early_exit_is_reported_with_exit_code() -> None:
    server = _ShellServer("echo bad config >&2; exit 3")
    try:
        with pytest.raises(DevServerError, match="exited with code 3") as err:
            server.start()
        assert "bad config" in str(err.value)
    finally:
        server.close()


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOLDWATCH_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path.resolve()
    monkeypatch.delenv("MOLDWATCH_CACHE")
    assert cache_dir().name in {".cache", "moldwatch"}


def test_cli_help_runs() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "service.devservers", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "fetch" in out and "up" in out
