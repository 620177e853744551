"""The worker's fixed label vocabularies exist at 0 from the start (rate() sees the first event),
and every resolution path a verdict can carry is one of them."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
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


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics.registry.collect()
            for s in m.samples if not s.name.startswith(("process_", "moldwatch_checkpoint_age", "moldwatch_store_"))
            and not s.name.endswith("_created")}


@settings(max_examples=60, deadline=None)
@given(verdicts=st.lists(st.fixed_dictionaries({
    "facility": st.sampled_from(["F1", "F2", "F9", None, ""]), "item": st.sampled_from(["A", "B", None, ""]),
    "anomaly": st.booleans(), "resolution": st.sampled_from(["exact", "conditional", "unscorable"]),
    "reason": st.sampled_from([None, UNSCORABLE_CAUSES["no_group_near"], "a reason from another version"]),
    "imputed": st.lists(st.sampled_from(["cushion", "fill_time"]), max_size=2),
    "on_recipe": st.sampled_from([True, False, None])}), max_size=15),
    skip=st.sets(st.integers(0, 14), max_size=3), known=st.booleans())
def test_a_batch_counts_what_its_verdicts_count_one_by_one(verdicts, skip, known) -> None:
    """Counting a batch's columns at once is counting each verdict it keeps, label by label
    (parts the store does not know, skipped positions and recipe checks included)."""
    from model_store.serving.verdict import VerdictColumns

    at_once, one_by_one = WorkerMetrics(), WorkerMetrics()
    if known:  # a store that knows F1/A and F2/B only: the rest count as "other"
        for metrics in (at_once, one_by_one):
            metrics.set_store(_Engine([("F1", "A"), ("F2", "B")]), "/store")
    at_once.observe_batch(VerdictColumns.of_verdicts(verdicts), skip=skip)
    for index, verdict in enumerate(verdicts):
        if index not in skip:
            one_by_one.observe_verdict(verdict)
    assert _samples(at_once) == _samples(one_by_one)


def test_a_verdict_without_facility_or_item_counts_under_none() -> None:
    metrics = WorkerMetrics()
    metrics.observe_verdict({"facility": None, "item": "", "anomaly": True, "resolution": "exact", "reason": None})
    text = generate_latest(metrics.registry).decode()
    assert 'moldwatch_verdicts_total{facility="none",item="none"} 1.0' in text
    assert 'moldwatch_anomalies_total{facility="none",item="none"} 1.0' in text
