"""The worker's drift watch adapter: verdicts in, metrics and log lines out (pure, no servers)."""
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from model_store.serving.drift import DriftConfig
from model_store.serving.store import open_store
from service.drift_watch import DriftMonitor


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture()
def monitor(forest_store: Path) -> tuple[DriftMonitor, CollectorRegistry, object]:
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftConfig(shift_h=2.0), registry)
    manifest = open_store(forest_store)
    monitor.use_store(manifest, manifest.model_version)
    return monitor, registry, manifest


def test_a_part_pushed_above_its_history_raises_its_flag_and_counts(monitor) -> None:
    monitor, registry, manifest = monitor
    (facility, item), part = next(iter(sorted(monitor.watch.parts.items())))
    verdict = {"model_version": manifest.model_version, "facility": facility, "item": item, "anomaly": False,
               "score": part.reference.quantiles[-1] * 10}  # every score above the history's 95th percentile
    before = samples(registry)
    assert before[("moldwatch_drift_watched_parts", ())] == len(monitor.watch.parts)
    key = ("moldwatch_drift", (("detector", "shift_up"), ("facility", facility), ("item", item)))
    assert before[key] == 0.0
    for _ in range(part.reference.block * 3):
        monitor.observe(verdict)
    after = samples(registry)
    assert after[key] == 1.0
    assert after[("moldwatch_drift_detections_total", (("detector", "shift_up"),))] == 1.0
    assert after[("moldwatch_drift_level", (("detector", "shift_up"), ("facility", facility), ("item", item)))] >= 1.0
    assert after[("moldwatch_drift_reference_alarm_rate", (("facility", facility), ("item", item)))] == \
        pytest.approx(part.reference.alarm_rate)


def test_verdicts_of_another_store_version_unjudged_or_unknown_parts_are_not_judged(monitor) -> None:
    monitor, registry, manifest = monitor
    (facility, item), part = next(iter(sorted(monitor.watch.parts.items())))
    for verdict in ({"model_version": "older", "facility": facility, "item": item, "score": 1e9, "anomaly": True},
                    {"model_version": manifest.model_version, "facility": facility, "item": item, "score": None},
                    {"model_version": manifest.model_version, "facility": facility, "item": item, "score": float("nan")},
                    {"model_version": manifest.model_version, "facility": facility, "item": item, "score": "7"}):
        for _ in range(part.reference.block):
            monitor.observe(verdict)
    assert part.blocks == 0 and part.shots == 0
    monitor.observe({"model_version": manifest.model_version, "facility": "F-new", "item": "new", "score": 0.5})
    assert samples(registry)[("moldwatch_drift_unreferenced_verdicts_total", ())] == 1.0


def test_a_store_without_references_or_with_a_broken_one_switches_the_watch_off(forest_store: Path, tmp_path: Path,
                                                                               capsys) -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftConfig(), registry)
    manifest = open_store(forest_store)
    manifest.raw["drift"]["parts"][0]["quantiles"] = "broken"
    monitor.use_store(manifest, manifest.model_version)
    assert monitor.watch is not None and monitor.watch.parts == {}
    assert samples(registry)[("moldwatch_drift_watched_parts", ())] == 0
    out = capsys.readouterr()
    assert "drift references of the model store do not read" in out.out + out.err
    manifest.raw.pop("drift")
    monitor.use_store(manifest, manifest.model_version)
    assert monitor.watch.parts == {}
    out = capsys.readouterr()
    assert "carries no drift references" in out.out + out.err
