"""What the deployment assets may refer to, and what they do refer to.

- :func:`worker_series`: every sample name a real worker exposes, with its label names, read from
  ``generate_latest`` of a ``WorkerMetrics`` registry exercised the way the worker does.
- :func:`references`: the metric names and label names a PromQL expression uses. A small
  tokenizer, not a parser: enough for expressions written by hand (ours), and strict in the
  direction that matters: an unknown identifier is reported as a metric name.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RECORDING = PROMETHEUS_DIR / "recording.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "moldwatch-dashboard.json"
K8S_WORKER = DEPLOY / "k8s" / "moldwatch-worker.yaml"

# Labels Prometheus attaches to every scraped series: job/instance always; namespace/pod from the
# Kubernetes relabelling and plant from the static job in prometheus.yml.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "plant"})
# Series Prometheus writes itself for every target.
SYNTHETIC_SERIES = {"up": set()}

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "info": ("_info",),
    "gauge": ("",),
}
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right",
                      "by", "without", "on", "ignoring"}) | AGGREGATIONS
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")

# Grafana's built-in interval variables, as a Prometheus duration.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def grafana_to_promql(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana variables (``$job``, ``${job}``, ``$__rate_interval``) with concrete values."""
    values = {**GRAFANA_INTERVALS, **(variables or {})}

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def label_values_query(query: str) -> str:
    """Grafana's ``label_values(selector, label)`` as the PromQL it amounts to."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_]\w*)\s*\)\s*", query)
    if match is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    selector, label = match.groups()
    return f"count by ({label}) ({selector})"


@dataclass
class References:
    """Names one PromQL expression uses."""

    metrics: set[str] = field(default_factory=set)
    # (metric, label) for labels matched inside a selector: must exist on that metric.
    matcher_labels: set[tuple[str | None, str]] = field(default_factory=set)
    # labels named in by/without/on/ignoring/group_*: must exist on some metric of the expression.
    grouping_labels: set[str] = field(default_factory=set)


def references(expr: str) -> References:
    refs = References()
    text = STRING.sub('""', grafana_to_promql(expr))
    for match in SELECTOR.finditer(text):
        metric, inner = match.group(1), match.group(2)
        if metric in KEYWORDS:  # `sum{...}` cannot happen; `by {` neither: treat as anonymous
            metric = None
        for label in MATCHER_LABEL.findall(inner):
            if label == "__name__":
                continue
            refs.matcher_labels.add((metric, label))
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    for match in GROUPING.finditer(text):
        refs.grouping_labels.update(x.strip() for x in match.group(2).split(",") if x.strip())
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = NUMBER.sub(" ", text)
    for match in IDENTIFIER.finditer(text):
        name = match.group(0)
        rest = text[match.end():]
        if name in KEYWORDS or re.match(r"\s*\(", rest):
            continue  # a keyword, or a function call
        refs.metrics.add(name)
    return refs


def _add(series: dict[str, set[str]], name: str, labels: Iterable[str]) -> None:
    series.setdefault(name, set()).update(labels)


def worker_series() -> dict[str, set[str]]:
    """Sample name -> label names, as a real worker's /metrics exposes them.

    The registry is exercised the way the worker exercises it (a verdict, a latency, a store, a
    source, a Kafka error...) so that labelled metrics have samples; labelled metrics a future change
    adds without exercising them here are still covered through their declared label names.
    """
    metrics = WorkerMetrics()
    metrics.watch_queue(lambda: 3, lambda: 1)  # the worker registers these two gauges at start-up
    engine = SimpleNamespace(model_version="20250601-1", manifest=SimpleNamespace(groups=[1, 2]),
                             cache=_FakeCache())
    metrics.set_store(engine, "/models/store")
    metrics.expect("mongo", ["moldwatch.verdicts", "moldwatch.alarms", "moldwatch.dead-letters"])
    metrics.observe_verdict({"facility": "F1", "item": "A", "anomaly": True, "resolution": "exact",
                             "imputed": ["Mold_Temperature_3"], "on_recipe": True})
    metrics.ready.set(1)
    metrics.observe_latency(record_time=100.0, received_at=100.01, acked_at=100.02, event_time=100.0)
    metrics.records_in.labels("mongo").inc()
    metrics.stream_lag.labels("mongo").set(0.1)
    metrics.kafka_send_errors.labels("moldwatch.verdicts").inc()
    metrics.source_errors.labels("mongo").inc()
    metrics.checkpointed()
    from service.http_auth import FailureLimiter
    from service.http_guard import HttpGuard, TokenStore

    # The HTTP gate registers its own metrics in the worker's registry when tokens are configured.
    guard = HttpGuard(None, TokenStore(None, None, 1.0), metrics_open=False, limiter=FailureLimiter(),  # type: ignore[arg-type]
                      registry=metrics.registry)
    guard.failures.labels("invalid_token").inc()
    from service.config import WorkerSettings
    from service.feedback import VerdictMemory
    from service.feedback_intake import FeedbackIntake

    # Operator feedback registers its counters when kafka_feedback_topic is set.
    FeedbackIntake(WorkerSettings(_env_file=None, kafka_feedback_topic="moldwatch.feedback"),  # type: ignore[call-arg]
                   VerdictMemory(1), metrics.registry)

    from model_store.serving.drift import DriftConfig, PartReference
    from service.drift_watch import DriftMonitor

    # Drift watch (on by default) against a store with one referenced part.
    drift = DriftMonitor(DriftConfig(), metrics.registry)
    reference = PartReference(4000, 40, tuple(float(q) for q in range(19)), 0.5, 0.02, ((2, 20),), 1.0, 200)
    drift.use_store(SimpleNamespace(raw={"drift": {"block": 200, "parts": [
        {"facility": "F1", "item": "A", **reference.to_dict()}]}}), "20250601-1")
    from model_store.serving.line_book import LineBook, PartLine
    from service.line_watch import LineWatch

    # Feedback lines (with a lines file): a served book that raised one part.
    lines = LineWatch(Path("/nonexistent/lines.json"), 1.0, metrics.registry, lambda book: None)
    lines.reloader.value = LineBook(3, "20250601-1", "t", "update", parts=(PartLine("F1", "A", 1.5, "target", "r"),))
    lines.use_store("20250601-1")
    lines.loads.labels("ok").inc()
    from service.lot_watch import LotMonitor

    # Lot drift (with a lots collection) against a store with one part's lot reference, one lot judged.
    lot_drift = LotMonitor(WorkerSettings(_env_file=None, lots_collection="lots"), metrics.registry)  # type: ignore[call-arg]
    lot_drift.use_store(SimpleNamespace(raw={"drift": {"parts": [{"facility": "F1", "item": "A", "lots": {
        "lots": 20, "ratio": 1.0, "dispersion": 1.0}}]}}), "20250601-1", SimpleNamespace(lot_columns={}))
    lot_drift.watches[("F1", "A")].observe_lot(3, 2.0)
    lot_drift.read_failures.inc()
    series: dict[str, set[str]] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            _add(series, family.name + suffix, ())
        for sample in family.samples:
            _add(series, sample.name, sample.labels)
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            for suffix in SUFFIXES.get(wrapper._type, ("",)):
                _add(series, wrapper._name + suffix, wrapper._labelnames)
    for name in list(series):
        if name.endswith("_bucket"):
            series[name].add("le")
    return series


class _FakeCache:
    stats = SimpleNamespace(hits=3, misses=1, loads=1, evictions=0)

    def __len__(self) -> int:
        return 1


def load_rules(path: Path) -> list[dict[str, Any]]:
    """Every rule of a rule file, each with its group's name under ``group``."""
    doc = yaml.safe_load(path.read_text())
    return [{**rule, "group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def unknown_names(expr: str, series: dict[str, set[str]], extra_labels: Iterable[str] = ()) -> list[str]:
    """Problems of one expression against the known series: unknown metrics and labels."""
    refs = references(expr)
    problems = [f"unknown metric {name!r}" for name in sorted(refs.metrics) if name not in series]
    known = TARGET_LABELS | {label for name in refs.metrics for label in series.get(name, ())}
    for metric, label in sorted(refs.matcher_labels, key=str):
        allowed = TARGET_LABELS | (series.get(metric, set()) if metric else known)
        if label not in allowed:
            problems.append(f"label {label!r} does not exist on {metric or 'the selected metrics'}")
    for label in sorted(refs.grouping_labels | set(extra_labels)):
        if label not in known:
            problems.append(f"label {label!r} is on none of {sorted(refs.metrics)}")
    return problems


def known_series() -> dict[str, set[str]]:
    """Worker series, Prometheus' own series, and every recorded series of recording.yml."""
    series = {**worker_series(), **{k: set(v) | {"job", "instance"} for k, v in SYNTHETIC_SERIES.items()}}
    for rule in load_rules(RECORDING):
        refs = references(rule["expr"])
        # A recorded series keeps at most the labels it was aggregated by.
        series[rule["record"]] = set(refs.grouping_labels) | {"job"}
    return series
