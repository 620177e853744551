"""deploy/prometheus checked with the real tools: promtool (rules, unit tests, config), the worker's
real metrics (every name and label the rules use exists), and a real Prometheus that scrapes a
WorkerMetrics registry and evaluates the rules."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from service.metrics import WorkerMetrics
from tests.support.promql import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RECORDING,
    RULE_TESTS,
    TEMPLATE_LABEL,
    grafana_to_promql,
    known_series,
    label_values_query,
    load_rules,
    references,
    unknown_names,
)

SEVERITIES = {"critical", "warning", "info"}
TEAMS = {"sre", "shopfloor", "ml"}


def promtool_run(promtool: Path, *args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    """Run promtool; fail the test with its whole output when it does not exit 0."""
    done = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} failed (exit {done.returncode}):\n{output}", pytrace=False)
    return output


# -- promtool ----------------------------------------------------------------------------------------
def test_promtool_check_rules(promtool: Path) -> None:
    output = promtool_run(promtool, "check", "rules", ALERTS.name, RECORDING.name)
    assert f"{len(load_rules(ALERTS))} rules found" in output
    assert f"{len(load_rules(RECORDING))} rules found" in output


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    output = promtool_run(promtool, "test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in output


def test_promtool_check_config(promtool: Path, tmp_path: Path) -> None:
    """The example config, with its rule files. Debian's Prometheus is built without Kubernetes
    service discovery; there the Kubernetes job is checked with its discovery block swapped for an
    equivalent static target (everything else, relabelling included, is still checked)."""
    # promtool checks that each job's bearer-token file exists: the example's path is where the
    # operator mounts the token, so the check runs on a copy pointing at a token made here.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    token = tmp_path / "metrics-token"
    token.write_text("mw_example\n")
    for job in config["scrape_configs"]:
        assert job["authorization"]["type"] == "Bearer", f"job {job['job_name']} sends no token: /metrics needs one"
        assert job["authorization"]["credentials_file"].startswith("/")
        job["authorization"]["credentials_file"] = str(token)
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rule_file, tmp_path / rule_file)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run([str(promtool), "check", "config", "prometheus.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    if done.returncode != 0 and "field kubernetes_sd_configs not found" in output:
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["10.0.0.1:8080"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        output = promtool_run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    elif done.returncode != 0:
        pytest.fail(f"promtool check config prometheus.yml failed:\n{output}", pytrace=False)
    assert "2 rule files found" in output


def test_config_loads_both_rule_files_and_scrapes_job_moldwatch() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert sorted(config["rule_files"]) == sorted([ALERTS.name, RECORDING.name])
    assert "moldwatch" in [job["job_name"] for job in config["scrape_configs"]]  # alerts.yml's up{job=...}


# -- the rules themselves ---------------------------------------------------------------------------
@pytest.mark.parametrize("rule", load_rules(ALERTS), ids=lambda r: r["alert"])
def test_alert_is_runbook_ready(rule: dict[str, Any]) -> None:
    assert rule.get("for"), "every alert waits before firing (for:)"
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES
    assert labels.get("team") in TEAMS
    assert annotations.get("summary"), "summary: one line for the pager"
    description = annotations.get("description", "")
    assert len(description) > 150 and "\n" in description, "description: what happened and what to do, step by step"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert set(tests["rule_files"]) == {ALERTS.name, RECORDING.name}
    firing: set[str] = set()
    quiet: set[str] = set()
    tested_exprs: list[str] = []
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
        tested_exprs += [check["expr"] for check in case.get("promql_expr_test", [])]
    alerts = {rule["alert"] for rule in load_rules(ALERTS)}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"
    assert firing | quiet <= alerts, "tests name alerts that do not exist"
    records = {rule["record"] for rule in load_rules(RECORDING)}
    untested = {r for r in records if not any(re.search(rf"(?<![\w:]){re.escape(r)}(?![\w:])", e) for e in tested_exprs)}
    assert untested == set(), "recording rules without a promql_expr_test"


def test_rule_names_are_unique_and_follow_conventions() -> None:
    alerts = [rule["alert"] for rule in load_rules(ALERTS)]
    records = [rule["record"] for rule in load_rules(RECORDING)]
    assert len(alerts) == len(set(alerts)) and len(records) == len(set(records))
    assert all(name.startswith("Moldwatch") for name in alerts)
    # level:metric:operations
    assert all(re.fullmatch(r"[a-z_]+:moldwatch_[a-z_]+:[a-z0-9_]+", name) for name in records), records


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return known_series()


def test_worker_registry_is_what_the_rules_expect(series: dict[str, set[str]]) -> None:
    """Sanity check of the inventory itself: a counter is exposed with _total, a histogram with
    _bucket (and le), the Info metric with _info."""
    assert series["moldwatch_verdicts_total"] >= {"facility", "item"}
    assert "le" in series["moldwatch_end_to_end_seconds_bucket"]
    assert series["moldwatch_store_info"] >= {"model_version"}
    assert "moldwatch_verdicts" not in series


@pytest.mark.parametrize("rule", load_rules(ALERTS) + load_rules(RECORDING),
                         ids=lambda r: r.get("alert") or r.get("record"))
def test_rule_uses_only_real_metrics_and_labels(rule: dict[str, Any], series: dict[str, set[str]]) -> None:
    templated = set()
    for text in rule.get("annotations", {}).values():
        templated.update(TEMPLATE_LABEL.findall(text))
    problems = unknown_names(rule["expr"], series, extra_labels=templated)
    assert problems == [], f"{rule['expr']}\n" + "\n".join(problems)


def test_the_name_checker_catches_mistakes(series: dict[str, set[str]]) -> None:
    """The checker above is only as good as its tokenizer: it must see a misspelt metric, a label
    the metric does not have, and a missing _total."""
    assert unknown_names('sum by (job) (rate(moldwatch_verdict_total[5m]))', series)
    assert unknown_names('rate(moldwatch_verdicts_total{reason="x"}[5m])', series)
    assert unknown_names('sum by (machine) (rate(moldwatch_verdicts_total[5m]))', series)
    assert unknown_names('rate(moldwatch_anomalies[5m])', series)
    assert unknown_names('moldwatch_store{model_version="1"}', series)
    assert not unknown_names('sum by (job, le) (rate(moldwatch_end_to_end_seconds_bucket{job=~"$job"}[$__rate_interval]))',
                             series)
    assert references('a / on (job) group_left b offset 5m > 0.5 and c{x="}"}').metrics == {"a", "b", "c"}


# -- a real Prometheus ------------------------------------------------------------------------------
@pytest.fixture
def worker_endpoint() -> Iterator[tuple[WorkerMetrics, str]]:
    """A WorkerMetrics registry served over HTTP on a free port, like the worker's /metrics."""
    metrics = WorkerMetrics()
    metrics.watch_queue(lambda: 0, lambda: 0)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _verdicts(metrics: WorkerMetrics) -> None:
    """One burst: F1/A 100 verdicts of which 20 anomalous and 75 on recipe; F2/B 50 verdicts, none
    anomalous, none the recipes can judge."""
    for i in range(100):
        metrics.observe_verdict({"facility": "F1", "item": "A", "anomaly": i % 5 == 0, "resolution": "exact",
                                 "on_recipe": i % 4 != 0})
        metrics.observe_latency(record_time=1000.0, received_at=1000.01, acked_at=1000.02, event_time=1000.0)
    for _ in range(50):
        metrics.observe_verdict({"facility": "F2", "item": "B", "anomaly": False, "resolution": "nearest",
                                 "on_recipe": None})


def _value(result: list[dict[str, Any]], **labels: str) -> float | None:
    for sample in result:
        if all(sample["metric"].get(k) == v for k, v in labels.items()):
            return float(sample["value"][1])
    return None


def _rules(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5) as resp:
        body = json.load(resp)
    return [rule for group in body["data"]["groups"] for rule in group["rules"]]


@pytest.mark.servers
def test_recording_rules_on_a_real_prometheus(prometheus_factory: Any, worker_endpoint: tuple[WorkerMetrics, str]) -> None:
    metrics, target = worker_endpoint
    _verdicts(metrics)  # counters exist at the first scrape
    prom = prometheus_factory([target], rule_files=[RECORDING, ALERTS], scrape_interval_s=0.5,
                              evaluation_interval_s=0.5)
    prom.wait_for('moldwatch_verdicts_total{facility="F1"}')
    _verdicts(metrics)  # the increase the rates see: 20 of 100 for F1, 0 of 50 for F2

    def settled(result: list[dict[str, Any]]) -> bool:
        return _value(result, facility="F1") == pytest.approx(0.2) and _value(result, facility="F2") == 0.0

    ratio = prom.wait_for('job_facility:moldwatch_anomaly_ratio:rate5m{job="moldwatch"}', settled, timeout_s=30)
    assert {s["metric"]["facility"] for s in ratio} == {"F1", "F2"}
    per_item = prom.wait_for("job_facility_item:moldwatch_anomaly_ratio:rate5m",
                             lambda r: _value(r, facility="F1", item="A") == pytest.approx(0.2))
    assert _value(per_item, facility="F2", item="B") == 0.0
    on_recipe = prom.wait_for("job_facility:moldwatch_on_recipe_ratio:rate5m",
                              lambda r: _value(r, facility="F1") == pytest.approx(0.75))
    assert _value(on_recipe, facility="F2") == 0.0
    rate = prom.query("job:moldwatch_verdicts:rate5m")
    assert rate and float(rate[0]["value"][1]) > 0
    p99 = prom.wait_for("job:moldwatch_end_to_end_seconds:p99_5m", lambda r: bool(r) and r[0]["value"][1] != "NaN")
    assert 0.01 < float(p99[0]["value"][1]) <= 0.025  # every latency observed was 20 ms

    # Every rule of both files evaluates without error against a real worker's series (a
    # many-to-many match or a bad label would show up here, not in promtool check).
    deadline = time.monotonic() + 20
    while any(rule.get("health") == "unknown" for rule in _rules(prom.url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    rules = _rules(prom.url)
    assert len(rules) == len(load_rules(ALERTS)) + len(load_rules(RECORDING))
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule.get("health") != "ok"}
    assert broken == {}

    # And every query of the dashboard runs (parses, matches, evaluates) on the same data.
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    exprs += [label_values_query(v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for expr in exprs:
        prom.query(grafana_to_promql(expr, {"job": "moldwatch"}))  # raises on an API error
    facility_panel = next(p for p in dashboard["panels"] if p["title"] == "Anomaly rate per facility")
    result = prom.query(grafana_to_promql(facility_panel["targets"][0]["expr"], {"job": "moldwatch"}))
    assert _value(result, facility="F1") == pytest.approx(0.2)
