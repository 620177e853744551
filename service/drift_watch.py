"""The worker's drift watch: acknowledged verdicts in, drift metrics and log lines out.

The rules are :mod:`model_store.serving.drift` (pure); this adapter feeds them the verdicts Kafka
acknowledged (what alarm consumers saw), builds a fresh watch from each store the worker serves
(its ``manifest["drift"]`` references: a new store is a new reference, so every unit starts
afresh), and exposes the state at scrape time:

    moldwatch_drift{facility,item,detector}        1 while the detector's flag is on (alert
                                                   MoldwatchVerdictDrift)
    moldwatch_drift_level{facility,item,detector}  its CUSUM statistic in units of its line
                                                   (1 = detection; capped at 2)
    moldwatch_drift_reference_alarm_rate{facility,item}  the alarm rate the store had on history
    moldwatch_drift_detections_total{detector}     flags that came on
    moldwatch_drift_watched_parts                  parts with a reference in the served store
    moldwatch_drift_unreferenced_verdicts_total    judged verdicts of parts without one (a new
                                                   part, too little history, an old store)

Alarms are counted at the store's own line (``score > 1``), what the references were made at,
whatever feedback line a part is judged at (``moldwatch lines``).

Readiness is never affected: drift says the verdicts need a look, not that the worker is broken.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from model_store.serving.drift import DETECTORS, DriftConfig, DriftWatch, references_from_manifest

log = structlog.get_logger("moldwatch.drift")


class DriftMonitor(Collector):
    def __init__(self, config: DriftConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.watch: DriftWatch | None = None
        self.model_version: str | None = None
        self.detections = Counter("moldwatch_drift_detections", "Drift flags that came on, by detector "
                                  "(noisy, blind: alarm rate up, down; shift_up, shift_down: score level).",
                                  ["detector"], registry=registry)
        for detector in DETECTORS:
            self.detections.labels(detector)
        self.unreferenced = Counter("moldwatch_drift_unreferenced_verdicts", "Judged verdicts of parts the served "
                                    "store has no drift reference for (new part, too little history, old store).",
                                    registry=registry)
        registry.register(self)

    def use_store(self, manifest: Any, model_version: str) -> None:
        """Watch against this store's references from now on (every unit starts afresh)."""
        try:
            references = references_from_manifest(manifest.raw.get("drift"))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("drift references of the model store do not read; drift watch is off for this store "
                      "(retrain to repair)", model_version=model_version, error=str(exc)[:300])
            references = {}
        if not references:
            log.warning("the model store carries no drift references; drift watch is off for this store (stores "
                        "trained before drift watch have none: retrain to enable)", model_version=model_version)
        self.watch = DriftWatch(references, self.config)
        self.model_version = model_version

    def observe(self, verdict: dict[str, Any]) -> None:
        """One acknowledged verdict. Verdicts of another store version (in flight across a reload)
        and unjudged ones are left out."""
        watch = self.watch
        score = verdict.get("score")
        if watch is None or verdict.get("model_version") != self.model_version \
                or not isinstance(score, (int, float)) or not math.isfinite(score):
            return
        facility, item = str(verdict.get("facility")), str(verdict.get("item"))
        part = watch.parts.get((facility, item))
        if part is None:
            self.unreferenced.inc()
            return
        # the store's own line (score > 1), not the verdict's: a feedback line raised by operators
        # (model_store.serving.line_book) is a decision about alarms, not a drift of the store
        for detector in part.observe(float(score), float(score) > 1.0):
            self.detections.labels(detector).inc()
            cusum = part.detectors[detector]
            log.warning("verdict drift: a part's verdicts left what its store did on history", facility=facility,
                        item=item, detector=detector, level=round(cusum.level, 2), blocks=part.blocks,
                        reference_alarm_rate=round(part.reference.alarm_rate, 5), model_version=self.model_version)

    def collect(self) -> Iterable[Any]:
        flags = GaugeMetricFamily("moldwatch_drift", "1 while a drift detector's flag is on for the part "
                                  "(on at its line, off below half of it).", labels=["facility", "item", "detector"])
        levels = GaugeMetricFamily("moldwatch_drift_level", "Drift detector statistic in units of its line "
                                   "(1 = detection, capped at 2).", labels=["facility", "item", "detector"])
        rates = GaugeMetricFamily("moldwatch_drift_reference_alarm_rate", "Alarm rate of the part on the store's "
                                  "history (what the lots calibrated).", labels=["facility", "item"])
        watch = self.watch
        parts = sorted(watch.parts.items()) if watch is not None else []
        for (facility, item), part in parts:
            rates.add_metric([facility, item], part.reference.alarm_rate)
            for detector in part.watches:
                cusum = part.detectors[detector]
                flags.add_metric([facility, item, detector], 1.0 if cusum.on else 0.0)
                levels.add_metric([facility, item, detector], cusum.level)
        yield flags
        yield levels
        yield rates
        yield GaugeMetricFamily("moldwatch_drift_watched_parts", "Parts with a drift reference in the served store.",
                                value=len(parts))


__all__ = ["DriftMonitor"]
