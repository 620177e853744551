"""A real single-node Apache Kafka 3.9.1 broker (KRaft, broker+controller)."""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

SCRAM = "SCRAM-SHA-512"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class KafkaSecurity:
    """Opt-in for a KafkaServer: SASL_SSL listeners (SCRAM-SHA-512, a CA made for this instance)
    beside the PLAINTEXT one, and with ``authorizer`` Kafka's StandardAuthorizer (deny by default).

    The PLAINTEXT listener stays what the harness uses (probes, creating ACLs, reading what the
    worker wrote): its principal User:ANONYMOUS is a super user, because in KRaft combined mode the
    broker's own controller and inter-broker requests arrive on PLAINTEXT listeners as ANONYMOUS.
    It listens on loopback only. Clients under test connect to ``secure_bootstrap_servers``.
    """

    users: Mapping[str, str] = field(default_factory=dict)  # SCRAM-SHA-512 user -> password, made at format time
    super_users: tuple[str, ...] = ()  # besides ANONYMOUS (the PLAINTEXT listener)
    authorizer: bool = True


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
        security: KafkaSecurity | None = None,
    ) -> None:
        self._java = require_tool("java", JAVA_HINT)  # before the temp dir exists
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)
        self.controller_port = controller_port if controller_port is not None else free_port()
        self.extra_config = dict(extra_config or {})
        self.security = security
        # Secured mode: a SASL_SSL listener with a valid certificate, and one whose certificate has
        # expired (same CA, same users), so a client's "certificate has expired" path is testable.
        self.secure_port = free_port() if security else None
        self.expired_port = free_port() if security else None
        self.tls_dir = self.workdir / "tls"
        self.cluster_id = random_cluster_id()
        self.log_dir = self.workdir / "kraft-logs"
        self.config_path = self.workdir / "server.properties"

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for aiokafka's bootstrap_servers."""
        return f"{self.host}:{self.port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        """`host:port` of the SASL_SSL listener (secured mode only)."""
        if self.secure_port is None:
            raise ValueError("this KafkaServer was made without security=KafkaSecurity(...)")
        return f"{self.host}:{self.secure_port}"

    @property
    def expired_bootstrap_servers(self) -> str:
        """`host:port` of a SASL_SSL listener whose server certificate has expired (secured mode only)."""
        if self.expired_port is None:
            raise ValueError("this KafkaServer was made without security=KafkaSecurity(...)")
        return f"{self.host}:{self.expired_port}"

    @property
    def ca_file(self) -> Path:
        """The CA (PEM) that signed the secured listeners' certificates; exists after start()."""
        return self.tls_dir / "ca.pem"

    @property
    def other_ca_file(self) -> Path:
        """A CA that signed nothing this broker serves: trusting only it must fail verification."""
        return self.tls_dir / "other-ca.pem"

    def client_settings(self, user: str, password: str | None = None) -> dict[str, Any]:
        """WorkerSettings fields that connect ``user`` over SASL_SSL (``password``: default the user's)."""
        assert self.security is not None, "client_settings() needs security=KafkaSecurity(...)"
        return {
            "kafka_bootstrap_servers": self.secure_bootstrap_servers,
            "kafka_tls": True,
            "kafka_tls_ca_file": self.ca_file,
            "kafka_sasl_mechanism": SCRAM,
            "kafka_sasl_username": user,
            "kafka_sasl_password": self.security.users[user] if password is None else password,
        }

    def config(self) -> dict[str, str]:
        listeners = f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        advertised = f"PLAINTEXT://{self.host}:{self.port}"
        return {
            **BASE_CONFIG,
            "listeners": listeners + (f",SASL_SSL://{self.host}:{self.secure_port},EXPIRED://{self.host}:{self.expired_port}"
                                      if self.security else ""),
            "advertised.listeners": advertised + (f",SASL_SSL://{self.host}:{self.secure_port},"
                                                  f"EXPIRED://{self.host}:{self.expired_port}" if self.security else ""),
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "log.dirs": str(self.log_dir),
            **(self._security_config() if self.security else {}),
            **self.extra_config,
        }

    def _security_config(self) -> dict[str, str]:
        assert self.security is not None
        config = {
            "listener.security.protocol.map": BASE_CONFIG["listener.security.protocol.map"] + ",SASL_SSL:SASL_SSL,EXPIRED:SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": SCRAM_LOGIN,
            "listener.name.expired.scram-sha-512.sasl.jaas.config": SCRAM_LOGIN,
            # PEM key stores (Kafka >= 2.7): the key (PKCS#8) and chain in one file, no keytool.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls_dir / "server.pem"),
            "listener.name.expired.ssl.keystore.type": "PEM",
            "listener.name.expired.ssl.keystore.location": str(self.tls_dir / "expired.pem"),
        }
        if self.security.authorizer:
            config["authorizer.class.name"] = STANDARD_AUTHORIZER
            config["super.users"] = ";".join(["User:ANONYMOUS", *(f"User:{u}" for u in self.security.super_users)])
        return config

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
        scram: list[str] = []
        if self.security:
            from service.devservers.tls import make_pki

            make_pki(self.tls_dir, self.host)
            for user, password in self.security.users.items():
                # KRaft keeps SCRAM credentials in the metadata log: written at format time (KIP-900).
                scram += ["--add-scram", f'{SCRAM}=[name={user},password="{password}"]']
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
                *scram,
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
