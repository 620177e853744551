"""Per-field tail evidence (ECDF tails, as ECOD does), from a bounded quantile table.

A unit (a part, or a whole maker) keeps, per field, the values at a fixed grid of cumulative
probabilities, dense in both tails. A new value's evidence on one field is ``-log`` of its
two-sided tail probability (twice the smaller of its two tails), read off the table by linear
interpolation, less ``-log`` of the central half's edge (the central half carries none). Beyond
the table's ends the tail stays at the end's and the evidence keeps growing linearly with the
distance (in units of the field's central spread), so a value ten spans out ranks above one a
single span out instead of tying at the last level. Continuous and monotone in the value.

Pure functions: arrays in, arrays out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cumulative probabilities of the table: 1e-4 .. 1 - 1e-4, dense in the tails where ranking
# happens. 61 levels x fields x 8 bytes: a few KiB per unit whatever the history's length.
TAIL_LEVELS = np.unique(np.concatenate([
    np.geomspace(1e-4, 0.05, 20), np.linspace(0.05, 0.95, 21), 1.0 - np.geomspace(1e-4, 0.05, 20),
]))
# The central half of a field's distribution carries no evidence (-log of a tail probability
# of 1/2 or more is clamped to 0): many fields near their centre are noise, not a defect.
CENTRAL_TAIL = 0.5
# Beyond the table, each central spread (p25..p75 width) of distance adds this much evidence.
EXCESS_GAIN = 2.0
# Table values closer than this share of the table's width (or magnitude) are one value (a tie).
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TailTable:
    """Quantiles of each field at :data:`TAIL_LEVELS` (levels, fields), and the rows behind them."""

    values: np.ndarray
    rows: np.ndarray  # (fields,) measured rows per field

    @classmethod
    def fit(cls, x: np.ndarray) -> "TailTable":
        x = np.asarray(x, dtype=float)
        values = np.full((len(TAIL_LEVELS), x.shape[1]), np.nan)
        rows = (~np.isnan(x)).sum(axis=0)
        for j in range(x.shape[1]):
            column = x[:, j][~np.isnan(x[:, j])]
            if len(column):
                values[:, j] = np.quantile(column, TAIL_LEVELS)
        return cls(values, rows)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}values": self.values, f"{prefix}rows": self.rows}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "TailTable":
        return cls(np.asarray(arrays[f"{prefix}values"], dtype=float), np.asarray(arrays[f"{prefix}rows"], dtype=np.int64))


def tail_evidence(table: TailTable, x: np.ndarray) -> np.ndarray:
    """(rows, fields) evidence >= 0; 0 where the value or the field's table is missing."""
    x = np.asarray(x, dtype=float)
    out = np.zeros(x.shape)
    levels = TAIL_LEVELS
    for j in range(x.shape[1]):
        grid = table.values[:, j]
        if np.isnan(grid).any() or table.rows[j] == 0:
            continue
        column = x[:, j]
        ok = ~np.isnan(column)
        if not ok.any():
            continue
        v = column[ok]
        # The CDF through the table's distinct values, continuous everywhere: a tied value (a
        # constant field, a plateau of a discrete one) is one knot at its tied levels' middle (its
        # mid-rank). np.interp needs increasing knots (on ties its result is a jump that a rounding
        # difference in the residual crosses: the verdict would depend on the batch it came in),
        # and beyond the table the tail stays at the end knot's, the distance term below grows.
        knots, cdf_at = _knots(grid)
        cdf = np.interp(v, knots, cdf_at)
        # Two-sided tail probability: 1/2 or more (no evidence) is exactly the central half, p25..p75.
        tail = 2.0 * np.minimum(cdf, 1.0 - cdf)
        evidence = np.maximum(-np.log(np.maximum(tail, 1e-300)) - np.log(1.0 / CENTRAL_TAIL), 0.0)
        spread = _central_spread(grid)
        excess = np.maximum(v - grid[-1], 0.0) + np.maximum(grid[0] - v, 0.0)
        evidence = evidence + EXCESS_GAIN * excess / spread
        out[np.flatnonzero(ok), j] = evidence
    return out


def _knots(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a table column and the CDF at each (the middle of its tied levels).
    Values a rounding apart are one value: a quantile interpolated at a level that falls on a
    plateau's edge lands a hair off the plateau's value."""
    scale = max(float(grid[-1] - grid[0]), float(np.abs(grid).max()), 1e-300)
    starts = np.flatnonzero(np.r_[True, np.diff(grid) > TIE_TOLERANCE * scale])
    ends = np.r_[starts[1:], len(grid)] - 1
    return grid[(starts + ends) // 2], 0.5 * (TAIL_LEVELS[starts] + TAIL_LEVELS[ends])


def _central_spread(grid: np.ndarray) -> float:
    """p25..p75 width, floored by the whole table's width and the field's magnitude."""
    q25, q75 = np.interp([0.25, 0.75], TAIL_LEVELS, grid)
    width = float(q75 - q25)
    if width > 0:
        return width
    full = float(grid[-1] - grid[0])
    if full > 0:
        return full
    return max(abs(float(grid[len(grid) // 2])) * 0.01, 1e-9)
