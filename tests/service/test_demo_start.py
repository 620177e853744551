"""The demo waits for its worker to listen, and a worker that stops first (a busy HTTP port) ends
the wait at once with the worker's own reason in one line, not a 60-second timeout."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from service.demo import NO_DEVSERVERS, DemoError, until_listening
from service.http import create_app, start_http


class _NeverListens:
    """A worker whose change stream never starts (its wait would run to the timeout)."""

    async def wait_listening(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        raise TimeoutError(f"worker not listening after {timeout} s")


class _Listens:
    async def wait_listening(self, timeout: float) -> None:
        await asyncio.sleep(0)


def test_a_worker_that_cannot_bind_its_port_ends_the_wait_at_once_with_its_reason() -> None:
    async def scenario() -> float:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]

            async def serve() -> None:  # what run_command.serve does first: bind the HTTP port
                await start_http(create_app(object()), "127.0.0.1", port)  # type: ignore[arg-type]

            began = time.monotonic()
            with pytest.raises(DemoError, match=rf"the worker stopped before it listened: cannot serve HTTP on 127.0.0.1:{port}: "
                                                r"Address already in use \(another moldwatch on this port\? try --http-port\)"):
                await until_listening(_NeverListens(), asyncio.create_task(serve()), timeout=30.0)
            return time.monotonic() - began

    assert asyncio.run(scenario()) < 10.0  # not the 30 s the wait would have run


def test_a_listening_worker_lets_the_demo_go_on() -> None:
    async def scenario() -> None:
        forever = asyncio.create_task(asyncio.sleep(3600))
        await until_listening(_Listens(), forever, timeout=5.0)
        assert not forever.done()
        forever.cancel()

    asyncio.run(scenario())


# `moldwatch demo` where service.devservers cannot be imported, as in an installed wheel (which
# leaves the local servers out: tests/deploy/test_wheel.py).
WITHOUT_DEVSERVERS = """
import importlib.abc, sys
class NotInWheel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "service.devservers" or name.startswith("service.devservers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInWheel())
sys.argv = ["moldwatch", *sys.argv[1:]]
from service.cli import app
app()
"""


def test_without_the_source_trees_servers_the_demo_says_to_run_from_a_checkout_in_one_line(tmp_path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-c", WITHOUT_DEVSERVERS, "demo", "--workdir", str(workdir), "--duration", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: {NO_DEVSERVERS}"]
    assert not workdir.exists()  # refused before anything was simulated, trained or started
