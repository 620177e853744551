"""What ``moldwatch demo`` shows: a live panel on a terminal, plain summary lines elsewhere.

The panel is built for the terminal's height: the summary and the latest alarms (the part an
operator acts on) come first and always fit; the per-facility table gets the rows that are left,
worst anomaly rate first. Off a terminal (piped, a CI log) nothing redraws: one plain line every
few seconds says the same in key=value words.
"""
from __future__ import annotations

import io
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

ALARMS_SHOWN = 6
MAX_UNSCORABLE_PARTS = 1000  # distinct (facility, item, reason) kept for the "unscorable" line
# Lines the panel needs besides the table rows, alarms and summary: outer border 2, alarms
# border 2, table title 1 + header 1 + rules 2 (box.SIMPLE_HEAD) + the "more" row 1.
FIXED_LINES = 2 + 2 + 1 + 1 + 2 + 1
SUMMARY_INSET = 4  # the outer panel's borders and padding around the summary


@dataclass
class LiveStats:
    """What the view shows; updated from the verdicts topic."""

    started: float = field(default_factory=time.monotonic)
    inserted: int = 0
    broken_inserted: int = 0
    verdicts: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    first_verdict_s: float | None = None
    per_facility: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    paths: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unscorable: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))  # (facility, item, why)
    recent_alarms: deque[str] = field(default_factory=lambda: deque(maxlen=ALARMS_SHOWN))
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=5000))

    def observe(self, verdict: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.first_verdict_s is None:
            self.first_verdict_s = now - self.started
        self.verdicts += 1
        self.arrivals.append(now)
        row = self.per_facility[verdict["facility"]]
        row[0] += 1
        self.paths[verdict["resolution"]] += 1
        if verdict["resolution"] == "unscorable" and len(self.unscorable) < MAX_UNSCORABLE_PARTS:
            self.unscorable[(str(verdict["facility"]), str(verdict["item"]), str(verdict.get("reason") or "-"))] += 1
        if verdict["anomaly"]:
            self.anomalies += 1
            row[1] += 1
            top = ", ".join(f["field"] for f in (verdict.get("top_features") or [])[:2])
            self.recent_alarms.append(f"{verdict['facility']} {verdict['item']} score {verdict['score']:.2f} ({top})")

    def rate(self) -> float:
        now = time.monotonic()
        return sum(1 for t in self.arrivals if now - t <= 5) / 5.0


def unscorable_text(stats: LiveStats) -> str:
    """How many verdicts were unscorable, and the part and reason behind most of them."""
    count = stats.paths.get("unscorable", 0)
    if not count:
        return "unscorable 0"
    text = f"unscorable {count:,} ({count / max(stats.verdicts, 1):.1%})"
    if stats.unscorable:
        (facility, item, why), n = max(stats.unscorable.items(), key=lambda kv: (kv[1], kv[0]))
        text += f", most: {facility} {item} ({n:,}: {why})"
    return text


def _ms(latencies: dict[float, float], q: float) -> str:
    value = latencies.get(q, math.nan) * 1000
    return f"{value:.0f} ms" if math.isfinite(value) else "-"


def render(stats: LiveStats, metrics_url: str, latencies: dict[float, float], model_version: str, height: int = 24,
           width: int = 80) -> Panel:
    """The live panel, at most ``height`` lines tall and ``width`` wide: the summary wraps rather
    than cut a word (how to stop, the unscorable part's reason), the latest alarms always inside,
    the facility table gets the lines left."""
    elapsed = time.monotonic() - stats.started
    share = stats.anomalies / max(stats.verdicts, 1)
    summary = Text.from_markup(
        f"[b]{stats.verdicts:,}[/] verdicts ({stats.rate():.0f}/s) · [b red]{stats.anomalies:,}[/] anomalies ({share:.1%}) · "
        f"{stats.dead_letters} dead letters (of {stats.broken_inserted} broken)\n"
        f"latency p50 {_ms(latencies, 0.5)} · p99 {_ms(latencies, 0.99)} · inserted {stats.inserted:,} in {elapsed:.0f} s\n"
        "paths: " + (", ".join(f"{k} {v:,}" for k, v in sorted(stats.paths.items()) if k != "unscorable") or "-")
        + " · " + unscorable_text(stats) + "\n"
        f"Ctrl-C to stop · {metrics_url} · model {model_version}"
    )
    summary_lines = len(summary.wrap(Console(width=max(width - SUMMARY_INSET, 20), file=io.StringIO()),
                                     max(width - SUMMARY_INSET, 20)))
    alarms = Text("\n".join(stats.recent_alarms) or "(none yet)", no_wrap=True, overflow="ellipsis")
    rows = max(0, height - FIXED_LINES - summary_lines - max(1, len(stats.recent_alarms)))
    table = Table(title="Verdicts per facility (highest anomaly rate first)", expand=True, box=box.SIMPLE_HEAD, padding=(0, 1),
                  show_edge=False)
    for name in ("facility", "verdicts", "anomalies", "anomaly rate"):
        table.add_column(name, justify="left" if name == "facility" else "right", no_wrap=True)
    ranked = sorted(stats.per_facility.items(), key=lambda kv: (-(kv[1][1] / kv[1][0]) if kv[1][0] else 0, kv[0]))
    for facility, (total, bad) in ranked[:rows]:
        style = "bold red" if total >= 20 and bad / total > 0.05 else ""
        table.add_row(facility, f"{total:,}", f"{bad:,}", f"{bad / total:.1%}" if total else "-", style=style)
    if len(ranked) > rows:
        table.add_row(f"… {len(ranked) - rows} more", "", "", "", style="dim")
    return Panel(Group(summary, Panel(alarms, title="latest alarms", title_align="left"), table), title="moldwatch live demo")


def summary_line(stats: LiveStats, latencies: dict[float, float]) -> str:
    """One plain line for a log or a pipe (no redraws, no colour)."""
    elapsed = time.monotonic() - stats.started
    first = f"{stats.first_verdict_s:.1f}s" if stats.first_verdict_s is not None else "-"
    latest = stats.recent_alarms[-1] if stats.recent_alarms else "-"
    return (f"t={elapsed:.0f}s inserted={stats.inserted} verdicts={stats.verdicts} rate={stats.rate():.0f}/s "
            f"anomalies={stats.anomalies} ({stats.anomalies / max(stats.verdicts, 1):.1%}) "
            f"unscorable={stats.paths.get('unscorable', 0)} dead_letters={stats.dead_letters} "
            f"p50={_ms(latencies, 0.5).replace(' ', '')} p99={_ms(latencies, 0.99).replace(' ', '')} "
            f"first_verdict_after={first} latest_alarm=\"{latest}\"")
