"""``moldwatch demo`` as a user runs it: it streams verdicts, and Ctrl-C leaves nothing running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from service.devservers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _descendants(pid: int) -> set[int]:
    found, stack = set(), [pid]
    while stack:
        current = stack.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
                    found.update(children)
                    stack.extend(children)
        except FileNotFoundError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def test_demo_streams_verdicts_and_ctrl_c_leaves_nothing_running(tmp_path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"  # a file, not a pipe: a full pipe would block the demo itself
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "demo", "--workdir", str(tmp_path), "--http-port", str(port), "--rate", "100"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    tail = lambda: log.read_text()[-4000:]  # noqa: E731
    try:
        deadline = time.monotonic() + 420
        verdicts = 0.0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                verdicts = _metric(port, "moldwatch_verdicts_total")
                if verdicts >= 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert verdicts >= 200, f"no verdicts flowed; demo output:\n{tail()}"
        children = _descendants(process.pid)
        assert children, "the demo should have started the Kafka and MongoDB servers"
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 120 s of Ctrl-C; output:\n{tail()}")
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert process.returncode == 0, tail()
    time.sleep(1)
    assert not [pid for pid in children if _alive(pid)], "servers left running after Ctrl-C"
    assert "Traceback" not in output
