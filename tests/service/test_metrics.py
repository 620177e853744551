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


class _Engine:
    """What WorkerMetrics.set_store reads of a scoring engine: a version, the manifest, a cache."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        from types import SimpleNamespace

        table = [{"key": {"maker": "M", "facility": f, "item": i, "cluster": 0}, "rows": 10} for f, i in pairs]
        self.model_version = "v1"
        self.manifest = SimpleNamespace(raw={"group_table": table}, groups=[])
        self.cache = _Cache()


class _Cache:
    stats = None

    def __len__(self) -> int:
        return 0


def _verdict(facility: object, item: object, anomaly: bool = False) -> dict:
    return {"facility": facility, "item": item, "anomaly": anomaly, "resolution": "exact", "reason": None}


def test_a_flood_of_new_facility_and_item_names_cannot_grow_the_metrics() -> None:
    metrics = WorkerMetrics()
    metrics.set_store(_Engine([("F1", "A"), ("F2", "B")]), "/store")
    metrics.observe_verdict(_verdict("F1", "A", anomaly=True))
    baseline = len(generate_latest(metrics.registry).decode().splitlines())
    for n in range(100_000):
        metrics.observe_verdict(_verdict(f"F-{n}" if n % 2 else "F1", f"ITEM-{n}", anomaly=n % 3 == 0))
    text = generate_latest(metrics.registry).decode()
    assert len(text.splitlines()) <= baseline + 4  # one "other" series per per-part counter, nothing per name
    assert 'moldwatch_verdicts_total{facility="F1",item="A"} 1.0' in text
    assert 'moldwatch_verdicts_total{facility="other",item="other"} 100000.0' in text
    assert 'moldwatch_anomalies_total{facility="other",item="other"} 33334.0' in text
    assert "moldwatch_unknown_part_verdicts_total 100000.0" in text
    assert "F-1" not in text and "ITEM-" not in text


def test_a_pair_is_bounded_by_the_pair_not_its_facility_alone() -> None:
    metrics = WorkerMetrics()
    metrics.set_store(_Engine([("F1", "A"), ("F2", "B")]), "/store")
    assert metrics.part_labels("F1", "A") == ("F1", "A")
    assert metrics.part_labels("F1", "B") == ("other", "other")  # both names known, the pair is not
    assert metrics.part_labels(None, "A") == ("other", "other")


def test_without_a_store_pairs_are_labelled_up_to_a_bound() -> None:
    from service.metrics import MAX_PAIRS_WITHOUT_STORE

    metrics = WorkerMetrics()
    for n in range(MAX_PAIRS_WITHOUT_STORE + 5):
        metrics.observe_verdict(_verdict(f"F{n}", "A"))
    assert metrics.part_labels(f"F{MAX_PAIRS_WITHOUT_STORE - 1}", "A") == (f"F{MAX_PAIRS_WITHOUT_STORE - 1}", "A")
    assert metrics.part_labels(f"F{MAX_PAIRS_WITHOUT_STORE}", "A") == ("other", "other")
