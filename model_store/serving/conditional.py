"""The setting-conditioned scorer: what the settings do not explain is the evidence.

One unit per maker, trained on the maker's whole history (dirty lots down-weighted, never dropped):

1. **Response.** A ridge regression from the scaled set points (linear, squares and pairwise
   products) plus a per-part offset to every production field: what this setting on this part
   should produce. Its residuals, divided by each part's robust residual spread, are ``z``.
   A setting never run before is still judged: the response extrapolates from the maker's
   other settings instead of calling it a defect.
1b. **Running baseline.** ``d``: ``z`` less the mean of the part's last few residuals (see
   :mod:`model_store.serving.baseline`). A field's evidence is the smaller of its evidence on
   ``z`` and on ``d``: a shot must be unlike what its setting should produce *and* unlike its
   neighbours. What the response misses for one part at one setting, shot after shot, is not a
   defect; nor is the first shot of a new part or setting that the response explains.
2. **Tails.** Per field, the ECDF tail evidence (as ECOD) of the residual ``z`` and of the raw
   value, each against the record's own part when the part has enough history (else the
   maker's residual table alone): a value rare for its setting, or rare for its part at all.
3. **One scale.** The evidence sum is turned into a held-out (cross-fitted) conformal tail
   probability per calibration unit (a part, or the maker's fallback for parts with little
   history), and the unit's line is the tail probability equal to its lots' defect share.
   ``score = log p / log p_line``: 1 at the line for every unit, so ranking across parts and
   the alarm line are the same thing.

Pure NumPy (serving imports no training library); arrays in, arrays out.
"""
from __future__ import annotations

import warnings
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np

from model_store.serving.baseline import running_baseline
from model_store.serving.excursions import BAND_QUANTILES, excursion_ratios, excursion_tolerance, lasting_rank
from model_store.serving.store_format import (
    LEGACY_BASELINE_CLIP,
    LEGACY_BASELINE_HALFLIFE,
    LEGACY_BASELINE_SHIFT_RUN,
    LEGACY_EXCURSION_SHARE,
    LEGACY_FOLLOW_NEW_PARTS,
    LEGACY_FOLLOW_NEW_SETTINGS,
    LEGACY_LASTING_AT_LINE,
    LEGACY_LASTING_RATIO,
    LEGACY_RAW_WEIGHT,
    LEGACY_RESIDUAL_EVIDENCE,
    ConditionalUnitEntry,
)
from model_store.serving.tails import TAIL_LEVELS, TailBank, TailTable

CONDITIONAL = "conditional"  # the resolution path and model kind of a record judged by it alone

PART_SEPARATOR = "\x1f"  # joins facility and item into one part key (a control char no name holds)
FALLBACK = "*"  # the maker-level calibration unit (parts with too little history of their own)
SETTING_CLIP = 6.0  # scaled set points beyond +-6 spreads are held there: a typo must not explode a square
# A set point beyond everything its maker ever ran, by more than SETTING_EXCURSION_TOLERANCES
# tolerances (a tolerance: the width of the maker's span of that set point, or half its magnitude
# when wider), is a gross excursion: a unit mix-up, a corrupt register, a typo. The response clips
# such a set point (SETTING_CLIP), so without this rule it would be judged as an ordinary shot.
# Wide on purpose: a new part at a new temperature is not a typo.
SETTING_EXCURSION_TOLERANCES = 3.0
SETTING_MAGNITUDE_SHARE = 0.5
# Residual tables (z, d) are in units of each field's residual spread: a column of one value has
# a central spread and an excursion tolerance of this (see TableSet.of).
RESIDUAL_UNIT = 1.0
EXCURSION_CAP = 1e9  # a finite ratio for the verdict however absurd the value
# Tolerances beyond what a part (or its maker) ever produced past which a value alarms however
# new its setting and however long it lasts: no set point makes a cushion of 1e12 or inf, so the
# shots before it (the running baseline) must not be able to make it normal.
ABSURD_EXCURSION_RATIO = 100.0


def part_keys(facility: np.ndarray, item: np.ndarray) -> np.ndarray:
    return np.array([f"{f}{PART_SEPARATOR}{i}" for f, i in zip(facility.tolist(), item.tolist())], dtype=object)


@dataclass(frozen=True)
class Levels:
    """The parts, facilities and items a response knows, each numbered (its one-hot column)."""

    parts: dict[str, int]
    facilities: dict[str, int]
    items: dict[str, int]

    @classmethod
    def of(cls, part_names: list[str]) -> Levels:
        parts = sorted(set(part_names))
        facilities = sorted({p.split(PART_SEPARATOR, 1)[0] for p in parts})
        items = sorted({p.split(PART_SEPARATOR, 1)[1] for p in parts})
        return cls({k: i for i, k in enumerate(parts)}, {k: i for i, k in enumerate(facilities)}, {k: i for i, k in enumerate(items)})

    def codes(self, keys: np.ndarray) -> np.ndarray:
        """(rows, 3): part, facility and item column per row; -1 where never seen. A new pairing
        of a known machine and a known item still gets both offsets."""
        names, inverse = _distinct(keys)
        per_name = np.full((len(names), 3), -1, dtype=np.int64)
        for n, key in enumerate(names):
            facility, _, item = key.partition(PART_SEPARATOR)
            per_name[n] = (self.parts.get(key, -1), self.facilities.get(facility, -1), self.items.get(item, -1))
        return per_name[inverse] if len(names) else np.full((len(keys), 3), -1, dtype=np.int64)

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.parts), len(self.facilities), len(self.items)


def _distinct(keys: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The distinct keys (as str) and each row's position among them."""
    if len(keys) == 0:
        return [], np.zeros(0, dtype=np.int64)
    names, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return names.tolist(), inverse.reshape(-1)


@dataclass(frozen=True)
class TableSet:
    """One kind of table of a unit (raw, residual or neighbour), every part's stacked once: the
    bank for tail evidence, the excursion band of each, and which key is which table."""

    index: dict[str, int]
    bank: TailBank
    band_low: np.ndarray  # (tables, fields) the band's edges, NaN as 0 (see excursion_ratios)
    band_high: np.ndarray
    tolerance: np.ndarray  # (tables, fields)

    @classmethod
    def of(cls, tables: Mapping[str, TailTable], fields: int, share: float, unit: float | None = None) -> TableSet:
        """``unit``: for tables of residuals in units of their spread (``z``, ``d``), 1: a column
        that held one value in history (a field a sensor reports in steps, never stepping) has
        a central spread and an excursion tolerance of one residual spread, not of ~0."""
        names = sorted(tables)
        bank = (TailBank.of([tables[k] for k in names], unit) if names else
                TailBank.of([TailTable(np.full((len(TAIL_LEVELS), fields), np.nan), np.zeros(fields, dtype=np.int64))]))
        low, high = bank.quantile(BAND_QUANTILES[0]), bank.quantile(BAND_QUANTILES[1])
        tolerance = excursion_tolerance(low, high, share)
        if unit is not None:
            tolerance = np.maximum(tolerance, unit)
        return cls({k: i for i, k in enumerate(names)}, bank, np.nan_to_num(low), np.nan_to_num(high), tolerance)

    def lookup(self, names: list[str], fallback: str | None = None) -> np.ndarray:
        """Table of each name (``fallback``'s where it has none; -1 where neither has one)."""
        other = self.index.get(fallback, -1) if fallback is not None else -1
        return np.array([self.index.get(name, other) for name in names], dtype=np.int64)

    def evidence(self, table: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.bank.evidence(table, x)

    def band_ratios(self, table: np.ndarray, x: np.ndarray) -> np.ndarray:
        return excursion_ratios(x, self.band_low[table], self.band_high[table], self.tolerance[table])


def _log_where(x: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """log(max(x, floor)) in the columns with a floor (finite), x itself elsewhere."""
    logged = np.isfinite(floor)
    if not logged.any():
        return x
    out = x.copy()
    with np.errstate(invalid="ignore"):
        out[:, logged] = np.log(np.maximum(x[:, logged], floor[logged]))
    return out


def log_floors(x: np.ndarray) -> np.ndarray:
    """Per column: 1 % of its smallest value if every measured value is positive, else NaN (linear)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore"):
        low = np.nanmin(np.where(np.isnan(x), np.inf, x), axis=0) if len(x) else np.full(x.shape[1], np.nan)
    return np.where(np.isfinite(low) & (low > 0), low * 0.01, np.nan)


def design_matrix(scaled: np.ndarray, codes: np.ndarray, counts: tuple[int, int, int], quadratic: bool) -> np.ndarray:
    """[1, s, s^2, s_i s_j (i < j), one-hot part, facility, item] per row (code -1: no column set)."""
    n, k = scaled.shape
    blocks = [np.ones((n, 1)), scaled]
    if quadratic:
        upper = np.triu_indices(k, 1)
        blocks += [scaled ** 2, scaled[:, upper[0]] * scaled[:, upper[1]]]
    for c, count in enumerate(counts):
        one_hot = np.zeros((n, count))
        known = codes[:, c] >= 0
        one_hot[np.flatnonzero(known), codes[known, c]] = 1.0
        blocks.append(one_hot)
    return np.hstack(blocks)


@dataclass(frozen=True)
class SettingResponse:
    """Expected production values from set points and part (normalised units)."""

    setting_center: np.ndarray  # (settings,)
    setting_scale: np.ndarray
    target_center: np.ndarray  # (fields,)
    target_scale: np.ndarray
    coefficients: np.ndarray  # (design columns, fields)
    quadratic: bool
    # (parts, settings + 1, fields): each part's own linear correction on its set points, fitted
    # on what the maker-wide response leaves (zeros for a part with little history)
    part_slopes: np.ndarray
    # Fields that were positive throughout history are modelled in logs (NaN floor = linear):
    # molding physics is multiplicative (fill time ~ volume / speed), and a ratio extrapolates to
    # a new speed where a quadratic in the speed does not. The floor (1 % of the smallest value
    # seen) keeps a 0 finite, and very far out.
    setting_log_floor: np.ndarray
    target_log_floor: np.ndarray

    def transform_settings(self, settings: np.ndarray) -> np.ndarray:
        return _log_where(np.asarray(settings, dtype=float), self.setting_log_floor)

    def transform_targets(self, production: np.ndarray) -> np.ndarray:
        return _log_where(np.asarray(production, dtype=float), self.target_log_floor)

    def scale_settings(self, settings: np.ndarray) -> np.ndarray:
        scaled = (self.transform_settings(settings) - self.setting_center) / self.setting_scale
        return cast("np.ndarray", np.clip(np.nan_to_num(scaled, nan=0.0), -SETTING_CLIP, SETTING_CLIP))

    def residuals(self, settings: np.ndarray, codes: np.ndarray, production: np.ndarray, counts: tuple[int, int, int]) -> np.ndarray:
        """Normalised production minus its expectation; NaN where the value is missing."""
        scaled = self.scale_settings(settings)
        expected = design_matrix(scaled, codes, counts, self.quadratic) @ self.coefficients
        part = codes[:, 0]
        if len(self.part_slopes):
            known = np.flatnonzero(part >= 0)
            local = np.hstack([np.ones((len(known), 1)), scaled[known]])
            expected[known] += np.einsum("rk,rkf->rf", local, self.part_slopes[part[known]])
        residual = (self.transform_targets(production) - self.target_center) / self.target_scale - expected
        logged = np.isfinite(self.target_log_floor)
        if logged.any():
            # Back to relative units for the evidence: in logs a value ten times its expectation is
            # only log(10) out, and a push far beyond a part's range would hide in the compression.
            log_units = residual[:, logged] * self.target_scale[logged]
            residual[:, logged] = np.sign(log_units) * np.expm1(np.minimum(np.abs(log_units), 700.0)) / self.target_scale[logged]
        return cast("np.ndarray", residual)


@dataclass(frozen=True)
class Calibration:
    """Held-out evidence sums of one calibration unit (sorted) and its line."""

    scores: np.ndarray  # ascending
    line: float  # evidence sum at the unit's line
    alpha: float  # the tail probability the line stands for (the unit's lot defect share, floored)

    def survival(self, evidence: np.ndarray) -> np.ndarray:
        """Conformal tail probability of an evidence sum, interpolated, decaying beyond the maximum."""
        c = self.scores
        n = len(c)
        rank = np.interp(evidence, c, np.arange(1, n + 1, dtype=float), left=0.0, right=float(n))
        p = (1.0 + n - rank) / (n + 1.0)
        spread = max(float(c[-1] - c[int(0.5 * (n - 1))]), 1e-6)
        beyond = evidence > c[-1]
        # (the exponent is clamped at 0: np.where evaluates it on every row, and one far below the
        # range with a tiny spread would overflow)
        p = np.where(beyond, np.exp(-np.maximum(evidence - c[-1], 0.0) / spread) / (n + 1.0), p)
        return cast("np.ndarray", np.clip(p, 1e-300, 1.0))

    @cached_property
    def _log_p_line(self) -> float:
        p_line = float(self.survival(np.array([self.line]))[0])
        return float(np.log(p_line)) if p_line < 1.0 else -1e-12

    def score(self, evidence: np.ndarray) -> np.ndarray:
        """``log p / log p_line``: 1 at the line, > 1 beyond it, monotone in the evidence."""
        return cast("np.ndarray", np.log(self.survival(evidence)) / self._log_p_line)


@dataclass(frozen=True)
class ConditionalUnit:
    maker: str
    features: tuple[str, ...]
    settings: tuple[str, ...]
    levels: Levels
    response: SettingResponse
    residual_scale: np.ndarray  # (parts + 1, fields): per part, last row = maker
    raw_tables: dict[str, TailTable]  # part key -> raw-value table (parts with enough history)
    residual_tables: dict[str, TailTable]  # part key -> residual table; FALLBACK = the maker's
    calibration: dict[str, Calibration]  # part key or FALLBACK
    # Defaults: how a unit of a store from before each setting was served (store_format.LEGACY_*);
    # training passes every one (model_store/conditional_fit.py).
    excursion_share: float = LEGACY_EXCURSION_SHARE  # tolerance beyond a band, as a share of its width
    residual_evidence: str = LEGACY_RESIDUAL_EVIDENCE  # "tails", "squares" or "both" (see _residual_evidence)
    raw_weight: float = LEGACY_RAW_WEIGHT  # weight of the part's raw-value tails beside the residual evidence
    baseline_halflife: float = LEGACY_BASELINE_HALFLIFE  # shots; 0: residuals judged as they are (no running baseline)
    baseline_clip: float = LEGACY_BASELINE_CLIP  # residuals enter the running baseline clipped to +-this
    baseline_state: dict[str, np.ndarray] = field(default_factory=dict)  # part key -> baseline at the history's end
    neighbour_tables: dict[str, TailTable] = field(default_factory=dict)  # as residual_tables, of d (baseline on)
    setting_ranges: dict[str, np.ndarray] = field(default_factory=dict)  # part key -> (2, settings) lowest, highest run
    lasting_ratio: float = LEGACY_LASTING_RATIO  # see ConditionalConfig.lasting_excursion_ratio (1: a store from before it)
    # (2, settings) lowest and highest each set point took in all of the maker's history (None: a
    # store from before it; the union of the parts' setting ranges stands in)
    setting_span: np.ndarray | None = None
    # Beyond the maker's span of a set point by more than its width (see outside_history), the
    # running baseline follows a shot all the way on each field further than the clip from it:
    # the response has nothing to go by there (a set point the maker never varied has no slope
    # at all), so what the new setting makes is what its last shots made. False: a store from before it.
    follow_new_settings: bool = LEGACY_FOLLOW_NEW_SETTINGS
    # A part the response never saw (no row of its own in training) is followed the same way: its
    # offset is what the maker's other parts suggest, and a new mould can sit far from that.
    follow_new_parts: bool = LEGACY_FOLLOW_NEW_PARTS
    # An excursion that alarms only through the lasting rule scores just above the line
    # (excursions.lasting_rank) instead of its whole ratio. False: a store from before it.
    lasting_at_line: bool = LEGACY_LASTING_AT_LINE
    baseline_shift_run: int = LEGACY_BASELINE_SHIFT_RUN  # shots of a level shift the baseline jumps to (0: off)
    absurd_ratio: float = ABSURD_EXCURSION_RATIO  # a rule of the scorer, not of the store: not in its files

    def z(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray) -> np.ndarray:
        codes = self.levels.codes(keys)
        residual = self.response.residuals(settings, codes, production, self.levels.counts)
        parts = len(self.levels.parts)
        return cast("np.ndarray", residual / self.residual_scale[np.where(codes[:, 0] >= 0, codes[:, 0], parts)])

    def judged_residuals(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray, order: np.ndarray | None = None,
                         state: Mapping[str, np.ndarray] | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``z``; ``d``, ``z`` less each part's running baseline (None: no baseline); the
        baselines' end state.

        ``order``: the rows' time order (default: as given). ``state``: baselines carried from
        earlier batches; a part not in it starts where the history ended (``baseline_state``).
        """
        z = self.z(settings, keys, production)
        if not self.baseline_halflife > 0:
            return z, None, {}
        order = np.arange(len(keys)) if order is None else np.asarray(order)
        start = self.baseline_state if state is None else ChainMap(dict(state), self.baseline_state)
        follow = self.followed(keys, settings)
        reach = self.first_shot_reach(keys) if self.follow_new_parts else None
        baseline, end = running_baseline(z, keys, order, self.baseline_halflife, self.baseline_clip, start, follow,
                                         self.baseline_shift_run, reach)
        return z, z - baseline, end

    # -- where a part the response never saw may sit -------------------------------------------
    @cached_property
    def _new_part_reach(self) -> np.ndarray:
        """(4, fields) in the maker's residual spreads: how far from the response's expectation a
        part it never saw may sit, learned from the parts it did see. Rows: what a new part of a
        known machine and a known item misses (its own offset and slopes), of a new machine (plus
        the machine's offset), of a new item (plus the item's), of both (all three): per field the
        largest of those terms over the known parts, in the units ``z`` is judged in."""
        fields = len(self.features)
        reach = np.zeros((4, fields))
        parts, facilities, _ = self.levels.counts
        if not parts:
            return reach
        response = self.response
        settings = len(self.settings)
        first = 1 + settings + (settings + settings * (settings - 1) // 2 if response.quadratic else 0)
        coefficients = response.coefficients
        own = np.zeros((parts, fields))
        machine = np.zeros((parts, fields))
        item = np.zeros((parts, fields))
        for key, p in self.levels.parts.items():
            facility, _, item_name = key.partition(PART_SEPARATOR)
            own[p] = coefficients[first + p]
            machine[p] = coefficients[first + parts + self.levels.facilities[facility]]
            item[p] = coefficients[first + parts + facilities + self.levels.items[item_name]]
            if len(response.part_slopes):
                span = self.setting_ranges.get(key)
                middle = (response.scale_settings(span.mean(axis=0, keepdims=True))[0] if span is not None
                          else np.zeros(settings))
                own[p] += np.r_[1.0, middle] @ response.part_slopes[p]
        scale = self.residual_scale[parts]
        logged = np.isfinite(response.target_log_floor)
        for row, missed in enumerate((own, own + machine, own + item, own + machine + item)):
            missed = missed.copy()
            # as residuals() turns a logged field back into relative units
            units = np.abs(missed[:, logged]) * response.target_scale[logged]
            missed[:, logged] = np.expm1(np.minimum(units, 700.0)) / response.target_scale[logged]
            reach[row] = np.nan_to_num(np.abs(missed).max(axis=0) / scale, nan=0.0)
        return reach

    def first_shot_reach(self, keys: np.ndarray) -> np.ndarray:
        """(rows, fields): for a row of a part the response never saw, how far from its expectation
        such a part may sit (see ``_new_part_reach``); 0 for a known part. The first shot of a new
        part has no shots before it to be judged against: within this reach of the expectation it
        is judged as where the part sits, beyond it by how far beyond (see running_baseline)."""
        names, inverse = _distinct(keys)
        reach = self._new_part_reach
        per_name = np.zeros((len(names), reach.shape[1]))
        for n, key in enumerate(names):
            if key in self.levels.parts:
                continue
            facility, _, item = key.partition(PART_SEPARATOR)
            new_machine, new_item = facility not in self.levels.facilities, item not in self.levels.items
            per_name[n] = reach[int(new_machine) + 2 * int(new_item)]
        return per_name[inverse] if len(names) else np.zeros((len(keys), reach.shape[1]))

    # -- every part's tables stacked once (built on first use, then kept) ------------------------
    @cached_property
    def residual_set(self) -> TableSet:
        return TableSet.of(self.residual_tables, len(self.features), self.excursion_share, RESIDUAL_UNIT)

    @cached_property
    def neighbour_set(self) -> TableSet:
        return TableSet.of(self.neighbour_tables, len(self.features), self.excursion_share, RESIDUAL_UNIT)

    @cached_property
    def raw_set(self) -> TableSet:
        return TableSet.of(self.raw_tables, len(self.features), self.excursion_share)

    @cached_property
    def _ranges(self) -> tuple[dict[str, int], np.ndarray]:
        names = sorted(self.setting_ranges)
        stacked = (np.array([self.setting_ranges[k] for k in names], dtype=float) if names
                   else np.zeros((0, 2, len(self.settings))))
        return {k: i for i, k in enumerate(names)}, stacked

    @cached_property
    def _maker_span(self) -> tuple[np.ndarray, np.ndarray]:
        """Per set point: the lowest and highest this maker ran."""
        if self.setting_span is not None:
            return np.asarray(self.setting_span[0], dtype=float), np.asarray(self.setting_span[1], dtype=float)
        _, ranges = self._ranges
        if not len(ranges):
            nothing = np.full(len(self.settings), np.nan)
            return nothing, nothing
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN set point: no span, never an excursion
            low, high = np.nanmin(ranges[:, 0, :], axis=0), np.nanmax(ranges[:, 1, :], axis=0)
        return low, high

    def setting_excursions(self, settings: np.ndarray) -> np.ndarray:
        """(rows, settings) excursion ratio of each set point (see SETTING_EXCURSION_TOLERANCES):
        0 within the maker's span, > 1 a gross excursion; 0 for a missing set point."""
        x = np.asarray(settings, dtype=float)
        low, high = self._maker_span
        tolerance = np.fmax(high - low, SETTING_MAGNITUDE_SHARE * np.fmax(np.abs(low), np.abs(high)))
        tolerance = np.where(tolerance > 0, tolerance, 1.0)  # a set point always 0: one unit is a tolerance
        with np.errstate(invalid="ignore", over="ignore"):
            beyond = np.fmax(low - x, x - high)
            ratio = beyond / (SETTING_EXCURSION_TOLERANCES * tolerance)
        return cast("np.ndarray", np.clip(np.nan_to_num(ratio, nan=0.0, posinf=EXCURSION_CAP), 0.0, EXCURSION_CAP))

    def field_evidence(self, key: str, z: np.ndarray, d: np.ndarray | None) -> np.ndarray:
        """Per field, against the tables of ``key`` (a part or FALLBACK): the residual evidence,
        or with a baseline the smaller of it and the tail evidence of ``d``."""
        z = np.asarray(z, dtype=float)
        return self._field_evidence(np.full(len(z), self.residual_set.index[key]),
                                    None if d is None else np.full(len(z), self.neighbour_set.index[key]), z, d)

    def _field_evidence(self, residual: np.ndarray, neighbour: np.ndarray | None, z: np.ndarray, d: np.ndarray | None) -> np.ndarray:
        """As :meth:`field_evidence`, each row against its own tables (indices into the sets)."""
        evidence = self._residual_evidence(residual, z)
        if d is None or neighbour is None:
            return evidence
        return cast("np.ndarray", np.minimum(evidence, self.neighbour_set.evidence(neighbour, d)))

    def _residual_evidence(self, table: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Per field: ECDF tail evidence of the residual, or half its square (a Gaussian's
        log-likelihood: moderate shifts on several fields add up), or the larger of the two."""
        tails = self.residual_set.evidence(table, z) if self.residual_evidence != "squares" else 0.0
        if self.residual_evidence == "tails":
            return cast("np.ndarray", tails)  # an array: only "squares" leaves it 0.0
        squares = 0.5 * np.nan_to_num(np.minimum(z, 1e6)) ** 2
        return cast("np.ndarray", np.maximum(tails, squares))

    def raw_evidence(self, key: str, production: np.ndarray) -> np.ndarray | float:
        """The part's raw-value tails, weighted (0 when the weight is 0: an infinite value's
        infinite tail must not turn into 0 * inf = NaN)."""
        if not self.raw_weight:
            return 0.0
        production = np.asarray(production, dtype=float)
        return self.raw_weight * self.raw_set.evidence(np.full(len(production), self.raw_set.index[key]), production)

    def evidence(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray, order: np.ndarray | None = None,
                 state: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray | None], dict[str, np.ndarray]]:
        """Per record: evidence sum, per-field evidence (rows, fields), the calibration unit key,
        the judged residuals (rows, fields); and the running baselines' end state.

        A part with its own raw table and calibration is judged against its own tables plus its
        raw-value tails; any other record against the maker's (FALLBACK) residual tables."""
        production = np.asarray(production, dtype=float)
        z, d, end = self.judged_residuals(settings, keys, production, order, state)
        names, inverse = _distinct(keys)
        own_name = np.array([key in self.raw_tables and key in self.calibration for key in names], dtype=bool)
        judged_as = [key if mine else FALLBACK for key, mine in zip(names, own_name)]
        residual = self.residual_set.lookup(judged_as)[inverse]
        neighbour = self.neighbour_set.lookup(judged_as)[inverse] if d is not None else None
        fields = self._field_evidence(residual, neighbour, z, d) if len(names) else np.zeros(production.shape)
        own = own_name[inverse] if len(names) else np.zeros(len(keys), dtype=bool)
        if self.raw_weight and own.any():
            rows = np.flatnonzero(own)
            fields[rows] += self.raw_weight * self.raw_set.evidence(self.raw_set.lookup(names)[inverse[rows]], production[rows])
        unit = np.array(judged_as, dtype=object)[inverse] if len(names) else np.full(0, FALLBACK, dtype=object)
        return fields.sum(axis=1), fields, unit, (z, d), end

    def score(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray, order: np.ndarray | None = None,
              state: Mapping[str, np.ndarray] | None = None) -> ConditionalScore:
        """Verdict numbers per record; ``order`` and ``state`` as in :meth:`judged_residuals`."""
        total, fields, unit, (z, d), end = self.evidence(settings, keys, production, order, state)
        score = np.zeros(len(total))
        line = np.full(len(total), np.nan)
        names, inverse = _distinct(unit)
        by_unit = np.argsort(inverse, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(inverse, minlength=len(names)))]
        for n, key in enumerate(names):
            rows = by_unit[bounds[n]:bounds[n + 1]]
            calibration = self.calibration[key]
            score[rows] = calibration.score(total[rows])
            line[rows] = calibration.line
        ratio, outside, lasting = self._excursion_ratios(keys, production, z, d, settings)
        worst = ratio.max(axis=1) if ratio.shape[1] else np.zeros(len(keys))
        ranked = np.where(lasting, lasting_rank(ratio), ratio) if self.lasting_at_line else ratio
        rank = ranked.max(axis=1) if ranked.shape[1] else np.zeros(len(keys))
        set_ratio = self.setting_excursions(settings)
        if set_ratio.shape[1]:
            worst = np.maximum(worst, set_ratio.max(axis=1))
            rank = np.maximum(rank, set_ratio.max(axis=1))
        return ConditionalScore(total, fields, unit, score, line, worst, end, outside, set_ratio > 1.0, rank)

    def excursions(self, keys: np.ndarray, production: np.ndarray, z: np.ndarray, d: np.ndarray | None = None,
                   settings: np.ndarray | None = None) -> np.ndarray:
        """Worst gross-excursion ratio per record (see :mod:`model_store.serving.excursions`): a
        value far beyond both what its part ever produced and what its setting explains alarms
        whatever the tails say. A field counts only when it is out on both (a new setting moves
        raw values legitimately; the residual alone would flag a value the part often produces).
        A part without a raw table is judged on its residual against the maker's.

        With a baseline, a record whose set points lie outside what its part ran in history (or a
        part without that history) must also be out on ``d``, the residual less the running
        baseline: there neither the part's raw band (made at other settings) nor the response (an
        extrapolation) can tell a gross excursion from what the new setting makes, and only the
        shots before it can. Within the part's own setting range the raw and residual bands are
        trusted alone for a value ``lasting_ratio`` tolerances out or more, so such an excursion
        keeps alarming however long it lasts; a smaller one must stand out from the last shots
        too (a lasting small shift is the plant's new normal until its lots say otherwise). At any
        setting, a value ``absurd_ratio`` tolerances out or more on both bands of a part with a raw
        table, or at ``EXCURSION_CAP`` for any part, alarms on the bands alone at its whole ratio:
        no set point explains it."""
        ratio, _, _ = self._excursion_ratios(keys, production, z, d, settings)
        return ratio.max(axis=1) if ratio.shape[1] else np.zeros(len(keys))

    def _excursion_ratios(self, keys: np.ndarray, production: np.ndarray, z: np.ndarray, d: np.ndarray | None,
                          settings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per field: the excursion ratio (see :meth:`excursions`); whether the value lies
        outside its part's raw band (the maker's residual band for a part without one): the
        verdict's ``out_of_range``; and whether the ratio is above 1 only through the lasting rule
        (like the part's last shots: see ``lasting_at_line``)."""
        z = np.asarray(z, dtype=float)
        production = np.asarray(production, dtype=float)
        if len(keys) == 0:
            nothing = np.zeros((0, len(self.features)), dtype=bool)
            return np.zeros((0, len(self.features))), nothing, nothing
        names, inverse = _distinct(keys)
        ratio = self.residual_set.band_ratios(self.residual_set.lookup(names, FALLBACK)[inverse], z)
        outside = ratio > 0
        # no setting explains it: a value at the cap (inf, 1e300) anywhere; for a part with its raw
        # table, one absurd_ratio tolerances beyond what the part ever produced (a part without one,
        # a new mould, may sit hundreds of residual spreads from the maker's response, legitimately)
        absurd = ratio >= EXCURSION_CAP
        raw_table = self.raw_set.lookup(names)[inverse]
        with_raw = np.flatnonzero(raw_table >= 0)
        if len(with_raw):
            raw = self.raw_set.band_ratios(raw_table[with_raw], production[with_raw])
            outside[with_raw] = raw > 0
            ratio[with_raw] = np.minimum(ratio[with_raw], raw)
            absurd[with_raw] = ratio[with_raw] >= self.absurd_ratio
        if d is not None:
            settled = np.minimum(ratio, self.neighbour_set.band_ratios(self.neighbour_set.lookup(names, FALLBACK)[inverse], d))
            known = self._within_history(names, inverse, settings) if settings is not None else np.zeros(len(keys), dtype=bool)
            lasting = known[:, None] & (ratio >= self.lasting_ratio)
            return (np.where(lasting | absurd, ratio, settled), outside,
                    lasting & ~absurd & (settled <= 1.0) & (ratio > 1.0))
        return ratio, outside, np.zeros(ratio.shape, dtype=bool)

    def outside_history(self, keys: np.ndarray, settings: np.ndarray) -> np.ndarray:
        """Per row: a set point beyond the lowest..highest its maker ran in history by more than
        that span's width (any change of a set point the maker never varied; a missing set point
        is never outside): where the response's slopes have nothing to go by."""
        settings = np.asarray(settings, dtype=float)
        low, high = self._maker_span
        width = high - low
        with np.errstate(invalid="ignore"):
            return cast("np.ndarray", ((settings < low - width) | (settings > high + width)).any(axis=1))

    def followed(self, keys: np.ndarray, settings: np.ndarray) -> np.ndarray | None:
        """Per row: whether the running baseline follows a far shot all the way (see
        ``follow_new_settings`` and ``follow_new_parts``); None: neither rule is on."""
        if not (self.follow_new_settings or self.follow_new_parts):
            return None
        follow = np.zeros(len(keys), dtype=bool)
        if self.follow_new_settings:
            follow |= self.outside_history(keys, settings)
        if self.follow_new_parts:
            follow |= self.new_parts(keys)
        return follow

    def new_parts(self, keys: np.ndarray) -> np.ndarray:
        """Per row: its part had no row in the history the response was fitted on."""
        names, inverse = _distinct(keys)
        return cast("np.ndarray", np.array([name not in self.levels.parts for name in names], dtype=bool)[inverse])

    def within_history(self, key: str, settings: np.ndarray) -> np.ndarray:
        """Per row: every set point within the lowest..highest its part ran in history (False for
        a part without that history, or a missing set point)."""
        settings = np.asarray(settings, dtype=float)
        return self._within_history([str(key)], np.zeros(len(settings), dtype=np.int64), settings)

    def _within_history(self, names: list[str], inverse: np.ndarray, settings: np.ndarray) -> np.ndarray:
        index, ranges = self._ranges
        part = np.array([index.get(name, -1) for name in names], dtype=np.int64)[inverse]
        out = np.zeros(len(inverse), dtype=bool)
        rows = np.flatnonzero(part >= 0)
        if len(rows):
            span = ranges[part[rows]]
            x = np.asarray(settings, dtype=float)[rows]
            out[rows] = ((x >= span[:, 0]) & (x <= span[:, 1])).all(axis=1)
        return out

    # -- persistence: one .npz of arrays, one JSON-ready dict of names ---------------------------
    def to_files(self, path: Path) -> dict[str, Any]:
        arrays: dict[str, np.ndarray] = {
            "setting_center": self.response.setting_center, "setting_scale": self.response.setting_scale,
            "target_center": self.response.target_center, "target_scale": self.response.target_scale,
            "coefficients": self.response.coefficients, "residual_scale": self.residual_scale,
            "part_slopes": self.response.part_slopes, "setting_log_floor": self.response.setting_log_floor,
            "target_log_floor": self.response.target_log_floor,
        }
        range_keys = sorted(self.setting_ranges)
        arrays["setting_ranges"] = (np.array([self.setting_ranges[k] for k in range_keys], dtype=float) if range_keys
                                    else np.zeros((0, 2, len(self.settings))))
        if self.setting_span is not None:
            arrays["setting_span"] = np.asarray(self.setting_span, dtype=float)
        baseline_keys = sorted(self.baseline_state)
        arrays["baseline_state"] = (np.array([self.baseline_state[k] for k in baseline_keys], dtype=float) if baseline_keys
                                    else np.zeros((0, len(self.features))))
        raw_keys, residual_keys, calibration_keys = sorted(self.raw_tables), sorted(self.residual_tables), sorted(self.calibration)
        for i, key in enumerate(raw_keys):
            arrays.update(self.raw_tables[key].to_arrays(f"raw{i}_"))
        for i, key in enumerate(residual_keys):
            arrays.update(self.residual_tables[key].to_arrays(f"res{i}_"))
        neighbour_keys = sorted(self.neighbour_tables)
        for i, key in enumerate(neighbour_keys):
            arrays.update(self.neighbour_tables[key].to_arrays(f"nbr{i}_"))
        for i, key in enumerate(calibration_keys):
            arrays[f"cal{i}"] = self.calibration[key].scores
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle
        return {
            "maker": self.maker, "features": list(self.features), "settings": list(self.settings),
            "parts": sorted(self.levels.parts, key=self.levels.parts.__getitem__), "quadratic": self.response.quadratic,
            "raw_tables": raw_keys, "residual_tables": residual_keys,
            "excursion_share": self.excursion_share, "residual_evidence": self.residual_evidence,
            "raw_weight": self.raw_weight,
            "baseline_halflife": self.baseline_halflife, "baseline_clip": self.baseline_clip, "baseline_parts": baseline_keys,
            "lasting_ratio": self.lasting_ratio, "follow_new_settings": self.follow_new_settings,
            "follow_new_parts": self.follow_new_parts, "lasting_at_line": self.lasting_at_line,
            "baseline_shift_run": self.baseline_shift_run,
            "neighbour_tables": neighbour_keys, "setting_range_parts": range_keys,
            "calibration": [{"unit": k, "line": self.calibration[k].line, "alpha": self.calibration[k].alpha,
                             "rows": int(len(self.calibration[k].scores))} for k in calibration_keys],
        }

    @classmethod
    def from_files(cls, entry: ConditionalUnitEntry, path: Path) -> ConditionalUnit:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        response = SettingResponse(arrays["setting_center"], arrays["setting_scale"], arrays["target_center"],
                                   arrays["target_scale"], arrays["coefficients"], entry.quadratic, arrays["part_slopes"],
                                   arrays["setting_log_floor"], arrays["target_log_floor"])
        return cls(
            maker=entry.maker, features=entry.features, settings=entry.settings,
            levels=Levels.of(list(entry.parts)), response=response,
            residual_scale=arrays["residual_scale"],
            raw_tables={k: TailTable.from_arrays(arrays, f"raw{i}_") for i, k in enumerate(entry.raw_tables)},
            residual_tables={k: TailTable.from_arrays(arrays, f"res{i}_") for i, k in enumerate(entry.residual_tables)},
            calibration={c.unit: Calibration(arrays[f"cal{i}"], c.line, c.alpha) for i, c in enumerate(entry.calibration)},
            excursion_share=entry.excursion_share,
            residual_evidence=entry.residual_evidence, raw_weight=entry.raw_weight,
            baseline_halflife=entry.baseline_halflife, baseline_clip=entry.baseline_clip,
            baseline_state={k: arrays["baseline_state"][i] for i, k in enumerate(entry.baseline_parts)},
            neighbour_tables={k: TailTable.from_arrays(arrays, f"nbr{i}_") for i, k in enumerate(entry.neighbour_tables)},
            setting_ranges={k: arrays["setting_ranges"][i] for i, k in enumerate(entry.setting_range_parts)},
            lasting_ratio=entry.lasting_ratio,
            setting_span=arrays.get("setting_span"),
            follow_new_settings=entry.follow_new_settings,
            follow_new_parts=entry.follow_new_parts,
            lasting_at_line=entry.lasting_at_line,
            baseline_shift_run=entry.baseline_shift_run,
        )


@dataclass(frozen=True)
class ConditionalScore:
    evidence: np.ndarray  # (rows,) evidence sum (the verdict's loss)
    fields: np.ndarray  # (rows, fields) per-field evidence (top_features)
    unit: np.ndarray  # (rows,) calibration unit: the part key, or FALLBACK
    score: np.ndarray  # (rows,) log p / log p_line
    line: np.ndarray  # (rows,) evidence sum at the line (the verdict's threshold)
    excursion: np.ndarray  # (rows,) worst gross-excursion ratio (> 1 alarms whatever the score)
    baseline_state: dict[str, np.ndarray]  # part key -> running baseline after these rows (empty: none kept)
    outside: np.ndarray | None = None  # (rows, fields) outside the part's raw band (the verdict's out_of_range)
    settings_outside: np.ndarray | None = None  # (rows, settings) set points that are gross excursions (out_of_range too)
    # (rows,) what the excursions add to the verdict's score: ``excursion``, except that one alarming
    # only through the lasting rule counts just above the line (None: ``excursion``)
    excursion_score: np.ndarray | None = None
