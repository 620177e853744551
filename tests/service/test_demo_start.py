"""The demo waits for its worker to listen, and a worker that stops first (a busy HTTP port) ends
the wait at once with the worker's own reason in one line, not a 60-second timeout."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from service.demo import DemoError, until_listening
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
