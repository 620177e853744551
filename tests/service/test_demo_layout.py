"""The demo's view: at 80x24 (a real pseudo-terminal too) the latest alarms stay on screen; off a
terminal, plain one-line summaries."""
from __future__ import annotations

import io
import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from service.demo_view import ALARMS_SHOWN, LiveStats, render, summary_line

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ROOT = Path(__file__).resolve().parents[2]


def busy_stats(facilities: int = 24, alarms: int = 10) -> LiveStats:
    stats = LiveStats()
    for f in range(facilities):
        for i in range(40):
            anomaly = i < f % 7
            stats.observe({"facility": f"F{f:02d}", "item": f"ITM-{i:03d}", "resolution": "exact" if i % 5 else "nearest",
                           "anomaly": anomaly, "score": 1.0 + i / 100, "top_features": [{"field": "cushion"}, {"field": "peak_pressure"}]})
    for k in range(alarms):
        stats.observe({"facility": "F99", "item": f"ITM-LAST-{k}", "resolution": "exact", "anomaly": True, "score": 2.5,
                       "top_features": [{"field": "nozzle_temperature"}, {"field": "injection_pressure_peak"}]})
    stats.inserted, stats.broken_inserted, stats.dead_letters = 1_234_567, 12, 11
    return stats


def screen(stats: LiveStats, width: int, height: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None, legacy_windows=False)
    console.print(render(stats, "http://127.0.0.1:8000/metrics", {0.5: 0.043, 0.99: 0.0725}, "20261124T0521Z-e5ce4e4e", height, width))
    return ANSI.sub("", console.file.getvalue()).rstrip("\n").splitlines()


@pytest.mark.parametrize("width, height", [(80, 24), (100, 30), (120, 50)])
def test_latest_alarms_fit_on_the_screen(width, height) -> None:
    stats = busy_stats()
    lines = screen(stats, width, height)
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    for alarm in list(stats.recent_alarms):
        assert alarm[:40] in text  # every recent alarm is on screen (the latest included)
    assert f"ITM-LAST-{9}" in text and len(stats.recent_alarms) == ALARMS_SHOWN
    assert "Ctrl-C to stop" in text and "…" not in text.replace("… ", "")  # nothing cut but the "… N more" row
    assert "20261124T0521Z-e5ce4e4e" in text.replace("│", "").replace(" ", "")
    if height < 40:
        assert "more" in text  # the facilities that did not fit are counted, not silently dropped


def test_worst_facilities_are_listed_first() -> None:
    lines = screen(busy_stats(), 80, 24)
    rows = [line for line in lines if re.search(r"\bF\d\d\b", line) and "%" in line]
    rates = [float(re.search(r"([\d.]+)%", row).group(1)) for row in rows]
    assert rates == sorted(rates, reverse=True) and rates


def test_plain_summary_line_off_a_terminal() -> None:
    line = summary_line(busy_stats(), {0.5: 0.043, 0.99: 0.0731})
    assert "\n" not in line and "\x1b" not in line
    assert "verdicts=" in line and "anomalies=" in line and "p99=73ms" in line and "ITM-LAST-9" in line


CHILD = r"""
import sys
from rich.console import Console
sys.path.insert(0, sys.argv[1])
from tests.service.test_demo_layout import busy_stats
from service.demo_view import render
console = Console()
print("SIZE", console.size.width, console.size.height, console.is_terminal)
console.print(render(busy_stats(), "http://127.0.0.1:8000/metrics", {0.5: 0.04, 0.99: 0.07}, "v1", console.size.height, console.size.width))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal via Linux ioctls")
def test_panel_in_a_real_80x24_pseudo_terminal() -> None:
    import fcntl
    import pty
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT)], stdin=follower, stdout=follower, stderr=follower,
                             env=env, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif child.poll() is not None:
            break
    child.wait(timeout=30)
    os.close(leader)
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "")
    assert child.returncode == 0, text
    size_line, _, panel = text.partition("\n")
    assert size_line.split()[1:] == ["80", "24", "True"], size_line
    lines = panel.rstrip("\n").splitlines()
    assert len(lines) <= 24 and "ITM-LAST-9" in panel


def test_the_unscorable_share_names_the_part_and_reason_behind_most() -> None:
    from service.demo_view import unscorable_text

    stats = LiveStats()
    assert unscorable_text(stats) == "unscorable 0"
    for resolution, facility, item, reason in [("exact", "F01", "A", None)] * 6 + [
            ("unscorable", "F02", "B", "no trained model for this facility and item")] * 3 + [
            ("unscorable", "F03", "C", "setting far from history")]:
        stats.observe({"facility": facility, "item": item, "resolution": resolution, "anomaly": False, "reason": reason})
    # 4 of 10 unscorable; F02 B has 3 of them (the tie-break on equal counts is the larger key)
    assert unscorable_text(stats) == "unscorable 4 (40.0%), most: F02 B (3: no trained model for this facility and item)"
    assert "unscorable=4 " in summary_line(stats, {})
    lines = screen(stats, 120, 30)
    assert any("unscorable 4 (40.0%), most: F02 B" in line for line in lines)
    # at 80 columns the reason wraps onto the next line instead of being cut, and the panel still fits
    narrow = screen(stats, 80, 24)
    assert len(narrow) <= 24 and all(len(line) <= 80 for line in narrow)
    joined = " ".join(line.strip("│ ") for line in narrow)
    assert "most: F02 B (3: no trained model for this facility and item)" in " ".join(joined.split())
