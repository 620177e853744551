"""deploy/grafana/moldwatch-dashboard.json: importable (valid JSON, a ${DS_PROMETHEUS} input, a
sane layout), and every query reads metrics and labels the worker really exposes. That every query
also runs on a real Prometheus is checked in test_prometheus_rules.py."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.promql import DASHBOARD, LEGEND_LABEL, known_series, label_values_query, references, unknown_names

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels of collapsed rows
    return [p for p in out if p["type"] != "row"]


def test_dashboard_is_an_importable_export(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None  # an export: Grafana assigns the id on import
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    # The same name as a data-source variable: file provisioning (which ignores __inputs) works too.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"


def test_facility_and_item_variables_come_from_label_values(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("facility", "item"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DS
        assert variable["query"]["query"].startswith("label_values(") and variable["query"]["query"].endswith(f", {name})")
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    assert '$facility' in variables["item"]["query"]["query"], "items follow the chosen facilities"


def test_every_panel_queries_prometheus(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty expr"
            assert target["datasource"] == DS
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refId"
        assert panel.get("description"), f"{panel['title']}: say what the panel means"


def test_layout_fits_the_grid(dashboard: dict[str, Any]) -> None:
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def test_dashboard_covers_the_worker(dashboard: dict[str, Any]) -> None:
    """The panels the plant and the SREs asked for are there (by the metric they chart)."""
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            used |= references(target["expr"]).metrics
    wanted = {
        "moldwatch_anomalies_total", "moldwatch_verdicts_total", "moldwatch_resolutions_total",
        "moldwatch_dead_letters_total", "moldwatch_end_to_end_seconds_bucket", "moldwatch_scoring_seconds_bucket",
        "moldwatch_change_stream_lag_seconds", "moldwatch_checkpoint_age_seconds", "moldwatch_model_cache_hits_total",
        "moldwatch_model_cache_misses_total", "moldwatch_model_cache_loads_total", "moldwatch_model_reloads_total",
        "moldwatch_kafka_send_errors_total", "moldwatch_store_info", "moldwatch_recipe_checks_total",
    }
    assert wanted - used == set()
    kinds = {p["type"] for p in panels(dashboard)}
    assert {"timeseries", "table"} <= kinds


def test_every_query_uses_real_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    series = known_series()
    problems = []
    queries = [(p["title"], t["expr"], t.get("legendFormat", "")) for p in panels(dashboard) for t in p["targets"]]
    queries += [(a["name"], a["expr"], "") for a in dashboard["annotations"]["list"] if a.get("expr")]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"${variable['name']}", label_values_query(variable["query"]["query"]), ""))
    for title, expr, legend in queries:
        for problem in unknown_names(expr, series, extra_labels=LEGEND_LABEL.findall(legend)):
            problems.append(f"{title}: {problem}")
    assert problems == []
