"""A throwaway PostgreSQL cluster from Debian's `postgresql` package."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from pathlib import Path

from service.devservers._process import DevServer, DevServerError, RunAs, run_checked

PG_HINT = "install the PostgreSQL server (Debian: apt-get install -y postgresql, or run .ci/install-system.sh)"
# PostgreSQL refuses to run as root; as root we run it as the system user
# Debian's package creates.
PG_SYSTEM_USER = "postgres"


def find_pg_bindir() -> Path:
    """Newest /usr/lib/postgresql/<ver>/bin with initdb, else the one on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise DevServerError(f"PostgreSQL's initdb not found: {PG_HINT}")


class PostgresServer(DevServer):
    """A fresh cluster in a temp dir, trust auth on 127.0.0.1; see `.dsn`."""

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait
    # for every client to disconnect first.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        # Checks first, so a missing install leaves no temp dir behind.
        self.bindir = find_pg_bindir()
        self._run_as = self._system_user()
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)
        self.data_dir = self.workdir / "data"
        self.user = "postgres"  # the database superuser initdb creates
        if self._run_as is not None:
            # The whole temp dir must belong to the server's user: it writes
            # its data, socket and our log file there.
            shutil.chown(self.workdir, self._run_as.pw_uid, self._run_as.pw_gid)

    @staticmethod
    def _system_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None  # not root: run as ourselves
        try:
            return pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError as exc:
            raise DevServerError(f"running as root but there is no `{PG_SYSTEM_USER}` user: {PG_HINT}") from exc

    @property
    def dsn(self) -> str:
        """libpq/psycopg connection URI for the `postgres` database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def run_as(self) -> RunAs | None:
        if self._run_as is None:
            return None
        # A clean environment: root's HOME, TMPDIR etc. are not the server user's.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._run_as.pw_dir, "LC_ALL": "C"}
        return RunAs(uid=self._run_as.pw_uid, gid=self._run_as.pw_gid, env=env)

    def prepare(self) -> None:
        run_checked(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",  # C locale: same on every machine, no locale packages needed
                "--no-sync",  # throwaway cluster: durability is pointless, speed is not
            ],
            "initdb",
            cwd=self.workdir,
            timeout_s=120,
            run_as=self.run_as(),
        )

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            # Throwaway test data: skip the disk flushes that make small
            # transactions slow.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        flags = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [str(self.bindir / "postgres"), "-D", str(self.data_dir), *flags]

    def probe(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
