"""The worker's fixed label vocabularies exist at 0 from the start (rate() sees the first event),
and every resolution path a verdict can carry is one of them."""
from __future__ import annotations

import json

from prometheus_client import generate_latest

from model_store.serving.scoring import UNSCORABLE_CAUSES
from model_store.serving.verdict import VERDICT_SCHEMA_PATH
from service.metrics import WorkerMetrics


def test_every_resolution_path_of_the_verdict_schema_is_exported_at_zero() -> None:
    text = generate_latest(WorkerMetrics().registry).decode()
    paths = json.loads(VERDICT_SCHEMA_PATH.read_text())["properties"]["resolution"]["enum"]
    assert "conditional" in paths  # records no setting group can judge, judged by the conditional scorer
    for path in paths:
        assert f'moldwatch_resolutions_total{{path="{path}"}} 0.0' in text, path
    for cause in (*UNSCORABLE_CAUSES, "other"):
        assert f'moldwatch_unscorable_total{{cause="{cause}"}} 0.0' in text, cause


def test_a_conditional_verdict_counts_on_its_path_and_not_as_unscorable() -> None:
    metrics = WorkerMetrics()
    metrics.observe_verdict({"facility": "F1", "item": "A", "anomaly": False, "resolution": "conditional", "reason": None})
    metrics.observe_verdict({"facility": "F1", "item": "A", "anomaly": False, "resolution": "unscorable",
                             "reason": UNSCORABLE_CAUSES["insufficient_evidence"] + ": more than 50%"})
    text = generate_latest(metrics.registry).decode()
    assert 'moldwatch_resolutions_total{path="conditional"} 1.0' in text
    assert 'moldwatch_unscorable_total{cause="insufficient_evidence"} 1.0' in text
    assert 'moldwatch_unscorable_total{cause="no_model_for_part"} 0.0' in text
