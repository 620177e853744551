"""Excursions: production values beyond what a group ever produced, judged apart from the model.

The models see min-max scaled inputs clipped to [0, 1] (the original team's reason stands: an
extreme value must not make a network's input diverge). The clip also hides the most obvious
defect there is — a cushion of 0, a pressure three times the usual — so the decision looks at what
the clip removed:

* each group keeps a *band* per production field: the 0.1 % and 99.9 % quantiles of its training
  values (quantiles, not min/max, so one sensor spike in training cannot widen it for good);
* a *tolerance* beyond the band: ``EXCURSION_BAND_SHARE`` of the band's width, and at least
  ``RELATIVE_FLOOR`` of the field's magnitude (see :func:`excursion_tolerance`);
* a measured value's *excursion ratio* is its distance outside the band divided by the tolerance
  (0 inside the band). A ratio above 1 makes the record anomalous whatever the model says, the
  field is named first, and the score (``max(loss / threshold, ratio)``) keeps growing with it.

Pure functions: arrays in, arrays out.
"""
from __future__ import annotations

from typing import cast

import numpy as np

from model_store.config import ThresholdConfig

# The band spans ~6.2 standard deviations of a normal field; a quarter of it beyond either edge is
# ~4.6 standard deviations from the mean, which a normal shot reaches about once in 250,000.
BAND_QUANTILES = (0.001, 0.999)
EXCURSION_BAND_SHARE = ThresholdConfig.excursion_band_share  # defined (and its value explained) once, in the config
# Some fields barely move within a setting (a cycle time is fixed by the cooling set point to a
# fraction of a second), and a new exact setting inside the same cluster moves them by a few
# percent: not a gross excursion. The tolerance is never below this share of the field's
# magnitude: a cycle time 10 % off, a cushion of 0, a pressure x3 are; 3 % is the model's to judge.
RELATIVE_FLOOR = 0.10
# A set point the part never ran in history moves actual temperatures and times with it (a mold
# temperature set 15 degrees higher reads 15 degrees higher): on such a setting only a value half
# its magnitude beyond anything produced counts as gross (a cushion of 0 and a pressure x3 still do).
NEW_SETTING_FLOOR = 0.50
ABSOLUTE_FLOOR = 1e-6
# Ratios are capped so that scores stay finite JSON numbers (an infinite value still flags).
MAX_RATIO = 1e12


def training_band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per feature of training rows ``x`` (rows, features), NaN ignored."""
    x = np.asarray(x, dtype=float)
    low = np.nanquantile(x, BAND_QUANTILES[0], axis=0)
    high = np.nanquantile(x, BAND_QUANTILES[1], axis=0)
    return np.nan_to_num(low), np.nan_to_num(high)


def excursion_tolerance(
    low: np.ndarray, high: np.ndarray, share: float = EXCURSION_BAND_SHARE, floor: float = RELATIVE_FLOOR
) -> np.ndarray:
    """Distance beyond the band at which a value becomes a gross excursion.

    ``share`` x band width, floored at ``floor`` x the field's magnitude (``RELATIVE_FLOOR``: fields
    that hardly vary within a setting; ``NEW_SETTING_FLOOR`` for a setting never run) and at
    ``ABSOLUTE_FLOOR``. Arrays broadcast: per feature, or per row and feature.
    """
    low = np.asarray(low, dtype=float)
    high = np.asarray(high, dtype=float)
    magnitude = np.maximum(np.abs(low), np.abs(high))
    return cast("np.ndarray", np.maximum(np.maximum(share * (high - low), floor * magnitude), ABSOLUTE_FLOOR))


def excursion_ratios(x: np.ndarray, low: np.ndarray, high: np.ndarray, tolerance: np.ndarray,
                     measured: np.ndarray | None = None) -> np.ndarray:
    """Per value: distance outside ``[low, high]`` divided by ``tolerance``; 0 inside the band,
    for unmeasured (imputed) values and for NaN. Shape (rows, features)."""
    x = np.asarray(x, dtype=float)
    outside = np.maximum(np.maximum(x - high, low - x), 0.0)
    # NaN (no value) is no evidence; an infinite value is the largest excursion there is.
    ratio = np.where(np.isnan(outside), 0.0, np.minimum(outside / tolerance, MAX_RATIO))
    if measured is not None:
        ratio = np.where(measured, ratio, 0.0)
    return ratio


# A lasting excursion's score (see lasting_rank): just above the line, growing with the ratio by
# so little that the largest ratio there is (MAX_RATIO) stays below 1.03.
LASTING_RANK_STEP = 1e-3
JUST_ABOVE_LINE = float(np.nextafter(1.0, np.inf))


def lasting_rank(ratio: np.ndarray) -> np.ndarray:
    """The score of an excursion that alarms only because it lasts (far beyond its part's bands
    but like the part's last shots): ``1 + LASTING_RANK_STEP * log(ratio)`` for a ratio above 1 —
    above the line, so it alarms, and ordered by its ratio among such excursions, but below any
    shot whose evidence stands out from its neighbours by a clear margin. A ratio at or below 1
    is returned as it is (no excursion; NaN stays NaN)."""
    ratio = np.asarray(ratio, dtype=float)
    beyond = ratio > 1.0
    # (a ratio a hair above 1 has a log too small to show beside 1: held one ulp above the line)
    rank = np.maximum(1.0 + LASTING_RANK_STEP * np.log(np.where(beyond, ratio, 1.0)), JUST_ABOVE_LINE)
    return np.where(beyond, rank, ratio)

