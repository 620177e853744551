"""A MongoDB-protocol test server (mongo-java-server, memory backend + oplog).

No registry reachable here ships a real `mongod`, so tests and the demo talk to
de.bwaldvogel:mongo-java-server through MongoLauncher.java, which patches it
for PyMongo 4.18+ (see that file). Data lives in memory: a restart loses it.

``MongoServer(tls=True)`` serves TLS only, with a CA made in the run (service.devservers.tls):
the main port with a valid certificate, ``expired_port`` with an expired one and ``mtls_port``
requiring a client certificate signed by the same CA, all three on the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.devservers._process import DevServer, free_port, require_tool
from service.devservers.fetch import JAVA_HINT, MONGO_JARS, PACKAGE_DIR, fetch

if TYPE_CHECKING:
    from service.devservers.tls import TestPki

LAUNCHER = PACKAGE_DIR / "MongoLauncher.java"
# The in-memory server is small; a low fixed heap keeps it from competing
# with Kafka and the tests on a 2-core machine.
JAVA_OPTS = ["-Xms64m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]
DEFAULT_HEAP = "512m"


class MongoServer(DevServer):
    """mongo-java-server on a free loopback port; `.uri` is a mongodb:// URI (with tls=True, a
    TLS-only one: connect with `.client_kwargs()` or the WorkerSettings of `.client_settings()`)."""

    name = "mongo"

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
        tls: bool = False,
        heap: str = DEFAULT_HEAP,
    ) -> None:
        self._java = require_tool("java", JAVA_HINT)  # before the temp dir exists
        # The memory backend keeps every document and every oplog entry (what change streams read):
        # a long run needs heap in proportion to what it inserted.
        self.heap = heap
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)
        self.tls = tls
        self.expired_port = free_port() if tls else None
        self.mtls_port = free_port() if tls else None
        self.tls_dir = self.workdir / "tls"
        self._pki: TestPki | None = None

    @property
    def uri(self) -> str:
        # directConnection: a single standalone server, no topology discovery.
        return self.uri_for(self.port)

    def uri_for(self, port: int | None) -> str:
        """The mongodb:// URI of one of this server's listeners (TLS options are given apart)."""
        if port is None:
            raise ValueError("this MongoServer was made without tls=True: it has no such listener")
        return f"mongodb://{self.host}:{port}/?directConnection=true"

    @property
    def pki(self) -> TestPki:
        """The run's CA, certificates and client key (exist after start(); TLS mode only)."""
        if self._pki is None:
            raise ValueError("no TLS files: make the server with MongoServer(tls=True) and start() it")
        return self._pki

    def client_settings(self, port: int | None = None, client_certificate: bool = False) -> dict[str, Any]:
        """WorkerSettings fields that connect to ``port`` (default the main one) over TLS trusting
        this run's CA, with the client certificate when asked (``mtls_port`` needs it)."""
        settings: dict[str, Any] = {"mongo_uri": self.uri_for(port or self.port), "mongo_tls": True,
                                    "mongo_tls_ca_file": self.pki.ca_file}
        if client_certificate:
            settings["mongo_tls_certificate_key_file"] = self.pki.client_pem
            settings["mongo_tls_certificate_key_password"] = self.pki.client_key_password
        return settings

    def client_kwargs(self) -> dict[str, Any]:
        """PyMongo options for the harness's own client on the main port (plain mode: none)."""
        return {"tls": True, "tlsCAFile": str(self.pki.ca_file)} if self.tls else {}

    def prepare(self) -> None:
        fetch(MONGO_JARS)
        if self.tls:
            from service.devservers.tls import make_pki

            self._pki = make_pki(self.tls_dir, self.host)

    def command(self) -> list[str]:
        # Java 11+ runs a single source file directly (compiled in memory).
        return [
            self._java,
            *JAVA_OPTS, f"-Xmx{self.heap}",
            "-cp",
            MONGO_JARS.classpath,
            str(LAUNCHER),
            str(self.port),
            self.host,
            *(self._tls_args() if self.tls else []),
        ]

    def _tls_args(self) -> list[str]:
        pki = self.pki
        return ["--tls", str(pki.server_pem),
                "--also", str(self.expired_port), str(pki.expired_pem),
                "--also", str(self.mtls_port), f"{pki.server_pem}+{pki.ca_file}"]  # +CA: client certificate required

    def probe(self) -> bool:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, **self.client_kwargs()
        )
        try:
            return client.admin.command("ping").get("ok") == 1.0
        finally:
            client.close()
