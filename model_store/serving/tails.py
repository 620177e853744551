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
from functools import cached_property

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
# A spread of denormal size (a history of 0 and 1e-308) would turn any distance into infinity.
MIN_SPREAD = 1e-200
# Table values closer than this share of the table's width (or magnitude) are one value (a tie).
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TailTable:
    """Quantiles of each field at :data:`TAIL_LEVELS` (levels, fields), and the rows behind them."""

    values: np.ndarray
    rows: np.ndarray  # (fields,) measured rows per field

    @classmethod
    def fit(cls, x: np.ndarray) -> TailTable:
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
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> TailTable:
        return cls(np.asarray(arrays[f"{prefix}values"], dtype=float), np.asarray(arrays[f"{prefix}rows"], dtype=np.int64))

    @cached_property
    def bank(self) -> TailBank:
        """This table alone, prepared for evaluation (built on first use, then kept)."""
        return TailBank.of([self])


def tail_evidence(table: TailTable, x: np.ndarray) -> np.ndarray:
    """(rows, fields) evidence >= 0; 0 where the value or the field's table is missing."""
    x = np.asarray(x, dtype=float)
    return table.bank.evidence(np.zeros(len(x), dtype=np.int64), x)


@dataclass(frozen=True)
class TailBank:
    """Tables of one shape stacked and prepared once (distinct knots, their CDF, spreads), so rows
    judged against different tables (each row its part's) are one vectorised pass, and nothing is
    re-derived from the quantiles per call.

    ``knots`` are each column's distinct table values (a tied value is one knot at its tied levels'
    middle: its mid-rank), padded with +inf to the table's length; ``cdf`` the CDF at each knot,
    padded with the last; ``count`` the real knots per column (0: the column has no usable table).
    """

    knots: np.ndarray  # (tables, levels, fields)
    cdf: np.ndarray  # (tables, levels, fields)
    count: np.ndarray  # (tables, fields)
    first: np.ndarray  # (tables, fields) the table's lowest value
    last: np.ndarray  # (tables, fields) the table's highest value
    spread: np.ndarray  # (tables, fields) central spread (see _central_spread)
    values: np.ndarray  # (tables, levels, fields) the quantiles themselves

    # rows x levels x fields of one pass: bounds the temporary arrays of a large batch
    CHUNK_ELEMENTS = 40_000_000

    @classmethod
    def of(cls, tables: list[TailTable] | tuple[TailTable, ...], unit: float | None = None) -> TailBank:
        """``unit``: the central spread of a column whose table holds one value only (default: 1 %
        of that value's magnitude); tables of residuals in units of their spread pass 1."""
        levels = len(TAIL_LEVELS)
        fields = tables[0].values.shape[1] if tables else 0
        shape = (len(tables), levels, fields)
        knots, cdf = np.full(shape, np.inf), np.zeros(shape)
        count = np.zeros((len(tables), fields), dtype=np.int64)
        first, last, spread = np.zeros(count.shape), np.zeros(count.shape), np.ones(count.shape)
        values = np.full(shape, np.nan)
        for t, table in enumerate(tables):
            if table.values.shape != (levels, fields):
                raise ValueError(f"tail table {t} has shape {table.values.shape}, the bank's tables are {(levels, fields)}")
            values[t] = table.values
            for j in range(fields):
                grid = table.values[:, j]
                if np.isnan(grid).any() or table.rows[j] == 0:
                    continue
                k, c = _knots(grid)
                knots[t, : len(k), j], cdf[t, : len(k), j], cdf[t, len(k):, j] = k, c, c[-1]
                count[t, j] = len(k)
                first[t, j], last[t, j], spread[t, j] = grid[0], grid[-1], _central_spread(grid, unit)
        return cls(knots, cdf, count, first, last, spread, values)

    def __len__(self) -> int:
        return len(self.count)

    def quantile(self, level: float) -> np.ndarray:
        """(tables, fields) each column's value at cumulative probability ``level`` (NaN where its
        table is missing), interpolated between the table's levels."""
        out = np.full(self.count.shape, np.nan)
        for t in range(len(self)):
            for j in range(self.count.shape[1]):
                out[t, j] = np.interp(level, TAIL_LEVELS, self.values[t, :, j])
        return out

    def evidence(self, index: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(rows, fields) evidence >= 0 of each row against table ``index[row]``; 0 where the value
        or the column's table is missing."""
        x = np.asarray(x, dtype=float)
        index = np.asarray(index, dtype=np.int64)
        out = np.zeros(x.shape)
        if x.size == 0:
            return out
        step = max(1, self.CHUNK_ELEMENTS // max(1, self.knots.shape[1] * x.shape[1]))
        for begin in range(0, len(x), step):
            out[begin:begin + step] = self._evidence(index[begin:begin + step], x[begin:begin + step])
        return out

    def _evidence(self, index: np.ndarray, x: np.ndarray) -> np.ndarray:
        _tables, levels, fields = self.knots.shape
        count = self.count[index]
        ok = (count > 0) & ~np.isnan(x)
        v = np.where(ok, x, 0.0)
        # The CDF through the knots (np.interp's rule, every row against its own table): constant
        # beyond the end knots, linear between them. ``above``, the number of knots at or below
        # the value, by a branch-free binary search (a few gathers of one knot per value instead
        # of comparing every knot); the +inf padding is never at or below a finite value.
        flat = self.knots.reshape(-1)
        base = (index * levels)[:, None] * fields + np.arange(fields)[None, :]  # level 0 of each value's column
        above = np.zeros(v.shape, dtype=np.int64)
        step = 1 << max(0, (levels - 1).bit_length() - 1)
        while step:
            probe = above + step
            inside = probe <= levels
            at = flat[base + (np.minimum(probe, levels) - 1) * fields]
            above = np.where(inside & (at <= v), probe, above)
            step >>= 1
        above = np.minimum(above, count)
        low = np.maximum(above - 1, 0)
        high = np.maximum(np.minimum(above, count - 1), 0)
        cdf_flat = self.cdf.reshape(-1)
        k0, k1 = flat[base + low * fields], flat[base + high * fields]
        c0, c1 = cdf_flat[base + low * fields], cdf_flat[base + high * fields]
        between = (above > 0) & (above < count)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            slope = np.where(between, (c1 - c0) / np.where(between, k1 - k0, 1.0), 0.0)
            cdf = np.where(between, slope * (v - k0) + c0, np.where(above == 0, c0, c1))
            # Two-sided tail probability: 1/2 or more (no evidence) is exactly the central half, p25..p75.
            tail = 2.0 * np.minimum(cdf, 1.0 - cdf)
            evidence = np.maximum(-np.log(np.maximum(tail, 1e-300)) - np.log(1.0 / CENTRAL_TAIL), 0.0)
            # Beyond the table the tail stays at the end knot's; the distance term grows.
            first, last = self.first[index], self.last[index]
            excess = np.maximum(v - last, 0.0) + np.maximum(first - v, 0.0)
            evidence = evidence + EXCESS_GAIN * excess / self.spread[index]
        return np.where(ok, evidence, 0.0)


def _knots(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a table column and the CDF at each (the middle of its tied levels).
    Values a rounding apart are one value: a quantile interpolated at a level that falls on a
    plateau's edge lands a hair off the plateau's value."""
    scale = max(float(grid[-1] - grid[0]), float(np.abs(grid).max()), 1e-300)
    starts = np.flatnonzero(np.r_[True, np.diff(grid) > TIE_TOLERANCE * scale])
    ends = np.r_[starts[1:], len(grid)] - 1
    return grid[(starts + ends) // 2], 0.5 * (TAIL_LEVELS[starts] + TAIL_LEVELS[ends])


def _central_spread(grid: np.ndarray, unit: float | None = None) -> float:
    """p25..p75 width, floored by the whole table's width, then by ``unit`` or the field's magnitude
    (a column of one value)."""
    q25, q75 = np.interp([0.25, 0.75], TAIL_LEVELS, grid)
    width = float(q75 - q25)
    if width > 0:
        return max(width, MIN_SPREAD)
    full = float(grid[-1] - grid[0])
    if full > 0:
        return max(full, MIN_SPREAD)
    if unit is not None:
        return float(unit)
    return max(abs(float(grid[len(grid) // 2])) * 0.01, 1e-9)
