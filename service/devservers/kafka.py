"""A real single-node Apache Kafka 3.9.1 broker (KRaft, broker+controller)."""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from service.devservers._process import DevServer, free_port, require_tool, run_checked
from service.devservers.fetch import JAVA_HINT, KAFKA_JARS, fetch

# Modest heap: the machine has 2 cores / 24 GiB and runs the tests besides;
# Kafka's own 1 GiB default is sized for real traffic.
JAVA_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
]

# Everything that defaults to replication factor 3 / min ISR 2 must be 1 on a
# single broker, or internal topics (consumer offsets, transactions) never
# come up. One partition for the internal topics keeps first use fast.
BASE_CONFIG: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    # Consumers in tests join a group and expect partitions at once; the 3 s
    # default only helps real deployments where many members join together.
    "group.initial.rebalance.delay.ms": "0",
    # Two cores: Kafka's thread defaults (3 network / 8 I/O) only add switching.
    "num.network.threads": "2",
    "num.io.threads": "2",
}

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


T = TypeVar("T")


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Same shape as `StorageTool random-uuid`; like Kafka's Uuid we avoid a
    leading '-', which a command line would read as an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class KafkaServer(DevServer):
    """Kafka 3.9.1 in KRaft combined mode on a free loopback port.

    The log dir is formatted once per instance; stop() + start() reuses the
    same port and log dir, so topics and committed offsets survive a restart.
    """

    name = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        extra_config: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self._java = require_tool("java", JAVA_HINT)  # before the temp dir exists
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)
        self.controller_port = controller_port if controller_port is not None else free_port()
        self.extra_config = dict(extra_config or {})
        self.cluster_id = random_cluster_id()
        self.log_dir = self.workdir / "kraft-logs"
        self.config_path = self.workdir / "server.properties"

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for aiokafka's bootstrap_servers."""
        return f"{self.host}:{self.port}"

    def config(self) -> dict[str, str]:
        return {
            **BASE_CONFIG,
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "log.dirs": str(self.log_dir),
            **self.extra_config,
        }

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            self._java,
            *JAVA_OPTS,
            f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp",
            KAFKA_JARS.classpath,
            main_class,
            *args,
        ]

    def prepare(self) -> None:
        fetch(KAFKA_JARS)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        (self.workdir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        run_checked(
            self._java_cmd(
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(self.config_path),
            ),
            "formatting Kafka storage",
            cwd=self.workdir,
            timeout_s=120,
        )

    def command(self) -> list[str]:
        return self._java_cmd("kafka.Kafka", str(self.config_path))

    def probe(self) -> bool:
        # Cheap TCP check first: keeps aiokafka from logging a connection
        # error for every probe while the JVM is still starting.
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return run_async(_has_brokers(self.bootstrap_servers))


async def _has_brokers(bootstrap_servers: str) -> bool:
    """A real Metadata request: the broker lists itself once it serves clients."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    finally:
        await client.close()


def run_async(coro: Coroutine[object, object, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop.

    A fresh thread has no event loop, so asyncio.run works there whether or
    not the caller (e.g. a pytest-asyncio test) already runs one.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
