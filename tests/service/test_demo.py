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
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "demo", "--workdir", str(tmp_path), "--http-port", str(port), "--rate", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
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
        assert verdicts >= 200, f"no verdicts flowed; demo output:\n{process.stdout.read() if process.poll() is not None else ''}"
        children = _descendants(process.pid)
        assert children, "the demo should have started the Kafka and MongoDB servers"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    time.sleep(1)
    assert not [pid for pid in children if _alive(pid)], "servers left running after Ctrl-C"
    assert "Traceback" not in output
