"""Lot drift: do a part's alarms still follow its lots' bad counts? Pure logic.

As each day's lots arrive, every closed lot of a watched part (facility, item, lot date) gives two
numbers: the alarms the store raised on the lot's judged shots (at the store's own line, score > 1)
and the bad parts the lot reports, scaled to those shots (``expected = bad_qty x judged /
(good_qty + bad_qty)``). On its own history the calibrated store raised ``ratio`` alarms per
expected bad part (:func:`lot_reference`, written at training under each part's drift reference).
Two one-sided CUSUMs over lots (:class:`LotWatch`), on the Poisson log-likelihood ratio of the
lot's alarm count:

- **more_than_lots**: ``ratio_more x ratio`` against ``ratio`` (alarms no longer explained by bad
  parts: false alarms the shop floor will learn to ignore);
- **fewer_than_lots**: ``ratio_fewer x ratio`` against ``ratio`` (bad parts the store no longer
  flags: the dangerous direction).

Each increment is divided by the part's dispersion on history (Pearson chi-square per degree of
freedom, at least 1: lots vary more than Poisson when material lots or shifts differ), the
quasi-likelihood scaling. For Poisson lots at the reference ratio the mean run to a false flag is
at least ``e^h`` lots per detector (Lorden's bound; the dispersion only lowers the statistic):
with ``h = 6``, about 400 lots, more than a year of daily lots per part. Flags come on at ``h``,
off below ``h / 2``, capped at ``2h`` (:class:`model_store.serving.drift.Cusum`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_store.serving.drift import Cusum

LOT_DETECTORS: tuple[str, ...] = ("more_than_lots", "fewer_than_lots")
MIN_EXPECTED = 0.5  # bad parts a lot that reports none is taken to expect (continuity correction)


@dataclass(frozen=True)
class LotDriftConfig:
    ratio_more: float = 2.0
    ratio_fewer: float = 0.25
    h: float = 6.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio_more) and self.ratio_more > 1.0):
            raise ValueError(f"lot drift ratio_more must be above 1, got {self.ratio_more}")
        if not 0.0 < self.ratio_fewer < 1.0:
            raise ValueError(f"lot drift ratio_fewer must be in (0, 1), got {self.ratio_fewer}")
        if not (math.isfinite(self.h) and self.h > 0):
            raise ValueError(f"lot drift h must be a positive number, got {self.h}")


@dataclass(frozen=True)
class LotReference:
    """What a part's alarms did against its lots on history, under the calibrated store."""

    lots: int  # lots with bad parts expected or alarms raised
    ratio: float  # alarms per expected bad part
    dispersion: float  # Pearson chi-square per degree of freedom, >= 1

    def to_dict(self) -> dict[str, Any]:
        return {"lots": self.lots, "ratio": self.ratio, "dispersion": self.dispersion}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LotReference:
        reference = cls(int(raw["lots"]), float(raw["ratio"]), float(raw["dispersion"]))
        if not (reference.lots >= 2 and math.isfinite(reference.ratio) and reference.ratio > 0
                and math.isfinite(reference.dispersion) and reference.dispersion >= 1.0):
            raise ValueError(f"lots reference out of range: {reference.to_dict()} (lots >= 2, ratio > 0, dispersion >= 1)")
        return reference


def lot_reference(alarms: np.ndarray, expected: np.ndarray, min_lots: int) -> LotReference | None:
    """A part's lot reference from its history lots' alarm counts and expected bad parts; None with
    fewer than ``min_lots`` informative lots (a bad part expected or an alarm raised) or no alarm."""
    alarms, expected = np.asarray(alarms, dtype=float), np.asarray(expected, dtype=float)
    keep = np.isfinite(alarms) & np.isfinite(expected) & ((expected > 0) | (alarms > 0))
    alarms, expected = alarms[keep], expected[keep]
    if len(alarms) < max(min_lots, 2) or alarms.sum() <= 0 or expected.sum() <= 0:
        return None
    ratio = float(alarms.sum() / expected.sum())
    mean = ratio * expected
    informative = mean > 0
    chi2 = float(np.sum((alarms[informative] - mean[informative]) ** 2 / mean[informative]))
    return LotReference(int(len(alarms)), ratio, max(1.0, chi2 / (len(alarms) - 1)))


def poisson_llr(count: float, mean0: float, mean1: float) -> float:
    """Log-likelihood ratio of a Poisson count under mean ``mean1`` against ``mean0``."""
    return count * math.log(mean1 / mean0) - (mean1 - mean0)


@dataclass
class LotWatch:
    """The two lot detectors of one part against its reference."""

    reference: LotReference
    config: LotDriftConfig = field(default_factory=LotDriftConfig)
    lots: int = 0
    detectors: dict[str, Cusum] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.detectors = {name: Cusum(self.config.h) for name in LOT_DETECTORS}

    def observe_lot(self, alarms: int, expected: float) -> list[str]:
        """One closed lot; the detectors whose flag has just come on. A lot reporting no bad part
        counts as half of one (a continuity correction: its alarms are still evidence of "more").
        A negative or non-finite input says nothing and is skipped."""
        if not (math.isfinite(expected) and expected >= 0) or alarms < 0:
            return []
        self.lots += 1
        mean0 = self.reference.ratio * max(expected, MIN_EXPECTED)
        increments = {
            "more_than_lots": poisson_llr(alarms, mean0, self.config.ratio_more * mean0),
            "fewer_than_lots": poisson_llr(alarms, mean0, self.config.ratio_fewer * mean0),
        }
        return [name for name in LOT_DETECTORS
                if self.detectors[name].update(increments[name] / self.reference.dispersion)]


def lot_references_from_manifest(drift: Mapping[str, Any] | None) -> dict[tuple[str, str], LotReference]:
    """Each part's lot reference from ``manifest["drift"]`` (parts without one, and stores from
    before lot references, have none); ValueError naming the part for a malformed one."""
    references: dict[tuple[str, str], LotReference] = {}
    for entry in (drift or {}).get("parts", []):
        if entry.get("lots") is None:
            continue
        key = (str(entry["facility"]), str(entry["item"]))
        try:
            references[key] = LotReference.from_dict(entry["lots"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"lot reference of {key[0]}/{key[1]}: {exc}") from None
    return references


__all__ = ["lot_references_from_manifest", "MIN_EXPECTED", "LOT_DETECTORS", "LotDriftConfig", "LotReference", "lot_reference",
           "poisson_llr", "LotWatch"]
