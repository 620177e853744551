"""Fetch the dev servers' jars from Maven Central into a local cache folder.

Each jar set is described by a pom shipped next to this file and copied with
`mvn dependency:copy-dependencies` into its own lib folder: Kafka's and the
Mongo server's jars stay apart because they bring clashing netty versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.devservers._process import DevServerError, require_tool, run_checked

PACKAGE_DIR = Path(__file__).resolve().parent
# Marker written after a complete copy; holds the pom's hash so editing a pom
# (e.g. a version bump) triggers a new fetch instead of reusing stale jars.
COMPLETE_MARKER = ".complete"
JAVA_HINT = "install a Java 17+ runtime (Debian: apt-get install -y openjdk-17-jdk-headless)"
MVN_HINT = "install Maven 3 (Debian: apt-get install -y maven)"


@dataclass(frozen=True)
class JarSet:
    """A pom and the cache folder its runtime jars are copied into."""

    name: str
    pom: Path

    @property
    def lib_dir(self) -> Path:
        return cache_dir() / "devservers" / self.name / "lib"

    @property
    def classpath(self) -> str:
        """A `lib/*` wildcard classpath entry, as `java -cp` expects it."""
        return str(self.lib_dir / "*")

    def pom_digest(self) -> str:
        return hashlib.sha256(self.pom.read_bytes()).hexdigest()

    def is_fetched(self) -> bool:
        marker = self.lib_dir / COMPLETE_MARKER
        return marker.is_file() and marker.read_text().strip() == self.pom_digest()


KAFKA_JARS = JarSet("kafka-3.9.1", PACKAGE_DIR / "kafka-pom.xml")
MONGO_JARS = JarSet("mongo-java-server-1.47.0", PACKAGE_DIR / "mongo-pom.xml")
ALL_JARS = (KAFKA_JARS, MONGO_JARS)


def repo_root() -> Path | None:
    """The checkout this package runs from, if it runs from one."""
    root = PACKAGE_DIR.parent.parent
    if (root / "pyproject.toml").is_file() and (root / ".git").exists():
        return root
    return None


def cache_dir() -> Path:
    """$MOLDWATCH_CACHE, else <checkout>/.cache (git-ignored), else ~/.cache/moldwatch."""
    env = os.environ.get("MOLDWATCH_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "moldwatch"


@contextmanager
def _fetch_lock() -> Iterator[None]:
    """Serialise fetches across processes (parallel test runs, CI + demo)."""
    lock_path = cache_dir() / "devservers" / ".fetch.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(jars: JarSet) -> Path:
    """Copy `jars` into its lib folder unless already there; returns the folder."""
    if jars.is_fetched():
        return jars.lib_dir
    require_tool("java", JAVA_HINT)
    mvn = require_tool("mvn", MVN_HINT)
    with _fetch_lock():
        if jars.is_fetched():  # another process finished it while we waited
            return jars.lib_dir
        parent = jars.lib_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        # Build in a scratch dir and swap it in, so a failed or interrupted
        # fetch never leaves a half-filled lib folder that looks usable.
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=parent) as scratch:
            work = Path(scratch)
            shutil.copyfile(jars.pom, work / "pom.xml")
            out = work / "lib"
            run_checked(
                [
                    mvn,
                    "-q",
                    "-B",  # batch mode: no progress bars or prompts in logs
                    "-Dstyle.color=never",
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={out}",
                    "-DincludeScope=runtime",
                ],
                f"fetching {jars.name} jars with Maven",
                cwd=work,
            )
            if not any(out.glob("*.jar")):
                raise DevServerError(f"Maven copied no jars for {jars.name} into {out}")
            (out / COMPLETE_MARKER).write_text(jars.pom_digest() + "\n")
            shutil.rmtree(jars.lib_dir, ignore_errors=True)
            out.rename(jars.lib_dir)
    return jars.lib_dir


def fetch_all() -> list[Path]:
    """Fetch every jar set (the `fetch` CLI command and CI's install step)."""
    return [fetch(jars) for jars in ALL_JARS]
