"""Shared plumbing for the local dev/test servers: ports, tools, processes.

Every server is a real process in its own session (process group) so stop()
can kill the server together with anything it forked, logging to a file in
its own temp dir, and registered for clean-up at interpreter exit.
"""

from __future__ import annotations

import abc
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"  # loopback only: nothing here should be reachable from outside
LOG_TAIL_LINES = 40  # enough to show a Java stack trace's top in an error


@dataclass(frozen=True)
class RunAs:
    """Run a process as this user, with this (complete) environment."""

    uid: int
    gid: int
    env: dict[str, str]


class DevServerError(RuntimeError):
    """A dev server could not be fetched, started or reached."""


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, install_hint: str) -> str:
    """Absolute path of `name` on PATH, or an error naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise DevServerError(f"`{name}` not found on PATH: {install_hint}")
    return path


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# Servers whose process or temp dir may still exist; closed at interpreter exit.
_OPEN: set[DevServer] = set()
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _OPEN_LOCK:
        servers = list(_OPEN)
    for server in servers:
        try:
            server.close()
        except Exception:  # noqa: BLE001 - best effort at exit: keep closing the others
            pass


class DevServer(abc.ABC):
    """A local server process on a fixed loopback port with start/stop/close.

    The port and the temp dir are chosen once per instance, so stop() followed
    by start() brings the server back on the same address with the same files.
    """

    name = "server"
    #: Signal that asks the server for a quick clean shutdown.
    stop_signal: signal.Signals = signal.SIGTERM
    #: Seconds to wait after stop_signal before SIGKILL.
    stop_grace_s = 15.0
    #: Pause between readiness probes: short, since each probe is cheap.
    probe_interval_s = 0.2

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        start_timeout_s: float = 90.0,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.start_timeout_s = start_timeout_s
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"moldwatch-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._closed = False
        self._lock = threading.RLock()
        with _OPEN_LOCK:
            _OPEN.add(self)  # from now on there is a temp dir to clean up

    # -- subclass hooks -------------------------------------------------
    def prepare(self) -> None:  # noqa: B027 - an optional hook: most servers need no setup
        """One-time setup before the first start (config files, data dirs)."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """Command line that runs the server in the foreground."""

    @abc.abstractmethod
    def probe(self) -> bool:
        """One real protocol call; True when the server answers properly."""

    def run_as(self) -> RunAs | None:
        """Another user to run the server (and helpers) as; None = ourselves."""
        return None

    # -- lifecycle ------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the server and wait until it answers; no-op when running."""
        with self._lock:
            if self.is_running:
                return self
            if self._closed:
                raise DevServerError(f"{self!r} was closed (its files are gone); create a new one")
            if not self._prepared:
                self.prepare()
                self._prepared = True
            began = time.monotonic()
            with self.log_path.open("ab") as log:
                log.write(f"\n=== moldwatch devservers: starting {self.name} on port {self.port}\n".encode())
                log.flush()
                run_as = self.run_as()
                self._proc = subprocess.Popen(
                    self.command(),
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() kills all of it
                    user=run_as.uid if run_as else None,
                    group=run_as.gid if run_as else None,
                    extra_groups=[] if run_as else None,  # drop root's supplementary groups
                    env=run_as.env if run_as else None,
                )
            try:
                self._wait_ready(began)
            except BaseException:
                self.stop()
                raise
            return self

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.start_timeout_s
        last_error: BaseException | None = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise DevServerError(
                    f"{self.name} exited with code {code} while starting; log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            try:
                if self.probe():
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet; keep the reason for the error
                last_error = exc
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"{self.name} on {self.host}:{self.port} not ready after {self.start_timeout_s:.0f}s "
                    f"(last probe error: {last_error!r}); log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(self.probe_interval_s)

    def stop(self) -> None:
        """Stop the server process group; idempotent. Files are kept for start()."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                _signal_group(proc.pid, self.stop_signal)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    pass
            # Always sweep the group: a server may leave forked helpers behind.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)

    def close(self) -> None:
        """stop() and delete the temp dir when this instance created it."""
        self.stop()
        self._closed = True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_checked(
    cmd: Sequence[str],
    what: str,
    *,
    cwd: Path | None = None,
    timeout_s: float = 600.0,
    run_as: RunAs | None = None,
) -> str:
    """Run a helper command to completion; DevServerError with its output on failure."""
    try:
        done = subprocess.run(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
            env=run_as.env if run_as else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise DevServerError(f"{what} timed out after {timeout_s:.0f}s: {' '.join(cmd)}") from exc
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise DevServerError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    return output
