"""A MongoDB-protocol test server (mongo-java-server, memory backend + oplog).

No registry reachable here ships a real `mongod`, so tests and the demo talk to
de.bwaldvogel:mongo-java-server through MongoLauncher.java, which patches it
for PyMongo 4.18+ (see that file). Data lives in memory: a restart loses it.
"""

from __future__ import annotations

from pathlib import Path

from service.devservers._process import DevServer, require_tool
from service.devservers.fetch import JAVA_HINT, MONGO_JARS, PACKAGE_DIR, fetch

LAUNCHER = PACKAGE_DIR / "MongoLauncher.java"
# The in-memory server is small; a low fixed heap keeps it from competing
# with Kafka and the tests on a 2-core machine.
JAVA_OPTS = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]


class MongoServer(DevServer):
    """mongo-java-server on a free loopback port; `.uri` is a mongodb:// URI."""

    name = "mongo"

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._java = require_tool("java", JAVA_HINT)  # before the temp dir exists
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)

    @property
    def uri(self) -> str:
        # directConnection: a single standalone server, no topology discovery.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def prepare(self) -> None:
        fetch(MONGO_JARS)

    def command(self) -> list[str]:
        # Java 11+ runs a single source file directly (compiled in memory).
        return [
            self._java,
            *JAVA_OPTS,
            "-cp",
            MONGO_JARS.classpath,
            str(LAUNCHER),
            str(self.port),
            self.host,
        ]

    def probe(self) -> bool:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
        )
        try:
            return client.admin.command("ping").get("ok") == 1.0
        finally:
            client.close()
