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

from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_store.serving.baseline import running_baseline
from model_store.serving.excursions import BAND_QUANTILES, EXCURSION_BAND_SHARE, excursion_ratios, excursion_tolerance
from model_store.serving.tails import TAIL_LEVELS, TailTable, tail_evidence

CONDITIONAL = "conditional"  # the resolution path and model kind of a record judged by it alone

PART_SEPARATOR = "\x1f"  # joins facility and item into one part key (a control char no name holds)
FALLBACK = "*"  # the maker-level calibration unit (parts with too little history of their own)
SETTING_CLIP = 6.0  # scaled set points beyond +-6 spreads are held there: a typo must not explode a square


def part_keys(facility: np.ndarray, item: np.ndarray) -> np.ndarray:
    return np.array([f"{f}{PART_SEPARATOR}{i}" for f, i in zip(facility.tolist(), item.tolist())], dtype=object)


@dataclass(frozen=True)
class Levels:
    """The parts, facilities and items a response knows, each numbered (its one-hot column)."""

    parts: dict[str, int]
    facilities: dict[str, int]
    items: dict[str, int]

    @classmethod
    def of(cls, part_names: list[str]) -> "Levels":
        parts = sorted(set(part_names))
        facilities = sorted({p.split(PART_SEPARATOR, 1)[0] for p in parts})
        items = sorted({p.split(PART_SEPARATOR, 1)[1] for p in parts})
        return cls({k: i for i, k in enumerate(parts)}, {k: i for i, k in enumerate(facilities)}, {k: i for i, k in enumerate(items)})

    def codes(self, keys: np.ndarray) -> np.ndarray:
        """(rows, 3): part, facility and item column per row; -1 where never seen. A new pairing
        of a known machine and a known item still gets both offsets."""
        out = np.full((len(keys), 3), -1, dtype=np.int64)
        for r, key in enumerate(keys.tolist()):
            facility, _, item = str(key).partition(PART_SEPARATOR)
            out[r] = (self.parts.get(key, -1), self.facilities.get(facility, -1), self.items.get(item, -1))
        return out

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.parts), len(self.facilities), len(self.items)


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
        return np.clip(np.nan_to_num(scaled, nan=0.0), -SETTING_CLIP, SETTING_CLIP)

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
        return residual


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
        return np.clip(p, 1e-300, 1.0)

    def score(self, evidence: np.ndarray) -> np.ndarray:
        """``log p / log p_line``: 1 at the line, > 1 beyond it, monotone in the evidence."""
        p_line = float(self.survival(np.array([self.line]))[0])
        denominator = np.log(p_line) if p_line < 1.0 else -1e-12
        return np.log(self.survival(evidence)) / denominator


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
    excursion_share: float = EXCURSION_BAND_SHARE  # tolerance beyond a band, as a share of its width
    residual_evidence: str = "tails"  # "tails", "squares" or "both" (see _residual_evidence)
    raw_weight: float = 1.0  # weight of the part's raw-value tails beside the residual evidence
    baseline_halflife: float = 0.0  # shots; 0: residuals judged as they are (no running baseline)
    baseline_clip: float = 4.0  # residuals enter the running baseline clipped to +-this
    baseline_state: dict[str, np.ndarray] = field(default_factory=dict)  # part key -> baseline at the history's end
    neighbour_tables: dict[str, TailTable] = field(default_factory=dict)  # as residual_tables, of d (baseline on)
    setting_ranges: dict[str, np.ndarray] = field(default_factory=dict)  # part key -> (2, settings) lowest, highest run

    def z(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray) -> np.ndarray:
        codes = self.levels.codes(keys)
        residual = self.response.residuals(settings, codes, production, self.levels.counts)
        parts = len(self.levels.parts)
        return residual / self.residual_scale[np.where(codes[:, 0] >= 0, codes[:, 0], parts)]

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
        baseline, end = running_baseline(z, keys, order, self.baseline_halflife, self.baseline_clip, start)
        return z, z - baseline, end

    def field_evidence(self, key: str, z: np.ndarray, d: np.ndarray | None) -> np.ndarray:
        """Per field, against the tables of ``key`` (a part or FALLBACK): the residual evidence,
        or with a baseline the smaller of it and the tail evidence of ``d``."""
        evidence = self._residual_evidence(key, z)
        if d is None:
            return evidence
        return np.minimum(evidence, tail_evidence(self.neighbour_tables[key], d))

    def _residual_evidence(self, key: str, z: np.ndarray) -> np.ndarray:
        """Per field: ECDF tail evidence of the residual, or half its square (a Gaussian's
        log-likelihood: moderate shifts on several fields add up), or the larger of the two."""
        tails = tail_evidence(self.residual_tables[key], z) if self.residual_evidence != "squares" else 0.0
        if self.residual_evidence == "tails":
            return tails
        squares = 0.5 * np.nan_to_num(np.minimum(z, 1e6)) ** 2
        return np.maximum(tails, squares)

    def raw_evidence(self, key: str, production: np.ndarray) -> np.ndarray | float:
        """The part's raw-value tails, weighted (0 when the weight is 0: an infinite value's
        infinite tail must not turn into 0 * inf = NaN)."""
        if not self.raw_weight:
            return 0.0
        return self.raw_weight * tail_evidence(self.raw_tables[key], production)

    def evidence(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray, order: np.ndarray | None = None,
                 state: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Per record: evidence sum, per-field evidence (rows, fields), the calibration unit key,
        the judged residuals (rows, fields); and the running baselines' end state."""
        production = np.asarray(production, dtype=float)
        z, d, end = self.judged_residuals(settings, keys, production, order, state)
        fields = np.zeros(production.shape)
        unit = np.full(len(keys), FALLBACK, dtype=object)
        for key in np.unique(keys) if len(keys) else ():
            rows = np.flatnonzero(keys == key)
            own = key in self.raw_tables and key in self.calibration
            d_rows = None if d is None else d[rows]
            if own:
                fields[rows] = self.field_evidence(key, z[rows], d_rows) + self.raw_evidence(key, production[rows])
                unit[rows] = key
            else:
                fields[rows] = self.field_evidence(FALLBACK, z[rows], d_rows)
        return fields.sum(axis=1), fields, unit, (z, d), end

    def score(self, settings: np.ndarray, keys: np.ndarray, production: np.ndarray, order: np.ndarray | None = None,
              state: Mapping[str, np.ndarray] | None = None) -> "ConditionalScore":
        """Verdict numbers per record; ``order`` and ``state`` as in :meth:`judged_residuals`."""
        total, fields, unit, (z, d), end = self.evidence(settings, keys, production, order, state)
        score = np.zeros(len(total))
        line = np.full(len(total), np.nan)
        for key in np.unique(unit) if len(unit) else ():
            rows = np.flatnonzero(unit == key)
            calibration = self.calibration[key]
            score[rows] = calibration.score(total[rows])
            line[rows] = calibration.line
        return ConditionalScore(total, fields, unit, score, line, self.excursions(keys, production, z, d, settings), end)

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
        trusted alone, so an excursion that lasts keeps alarming however long it lasts."""
        out = np.zeros(len(keys))
        for key in np.unique(keys) if len(keys) else ():
            rows = np.flatnonzero(keys == key)
            ratio = _band_ratios(self.residual_tables.get(key, self.residual_tables[FALLBACK]), z[rows], self.excursion_share)
            table = self.raw_tables.get(key)
            if table is not None:
                ratio = np.minimum(ratio, _band_ratios(table, production[rows], self.excursion_share))
            if d is not None:
                neighbours = self.neighbour_tables.get(key, self.neighbour_tables[FALLBACK])
                settled = np.minimum(ratio, _band_ratios(neighbours, d[rows], self.excursion_share))
                known = self.within_history(key, settings[rows]) if settings is not None else np.zeros(len(rows), dtype=bool)
                ratio = np.where(known[:, None], ratio, settled)
            out[rows] = ratio.max(axis=1) if ratio.shape[1] else 0.0
        return out

    def within_history(self, key: str, settings: np.ndarray) -> np.ndarray:
        """Per row: every set point within the lowest..highest its part ran in history (False for
        a part without that history, or a missing set point)."""
        settings = np.asarray(settings, dtype=float)
        span = self.setting_ranges.get(key)
        if span is None:
            return np.zeros(len(settings), dtype=bool)
        return ((settings >= span[0]) & (settings <= span[1])).all(axis=1)

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
        np.savez(path, **arrays)
        return {
            "maker": self.maker, "features": list(self.features), "settings": list(self.settings),
            "parts": sorted(self.levels.parts, key=self.levels.parts.__getitem__), "quadratic": self.response.quadratic,
            "raw_tables": raw_keys, "residual_tables": residual_keys,
            "excursion_share": self.excursion_share, "residual_evidence": self.residual_evidence,
            "raw_weight": self.raw_weight,
            "baseline_halflife": self.baseline_halflife, "baseline_clip": self.baseline_clip, "baseline_parts": baseline_keys, "neighbour_tables": neighbour_keys, "setting_range_parts": range_keys,
            "calibration": [{"unit": k, "line": self.calibration[k].line, "alpha": self.calibration[k].alpha,
                             "rows": int(len(self.calibration[k].scores))} for k in calibration_keys],
        }

    @classmethod
    def from_files(cls, entry: dict[str, Any], path: Path) -> "ConditionalUnit":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        response = SettingResponse(arrays["setting_center"], arrays["setting_scale"], arrays["target_center"],
                                   arrays["target_scale"], arrays["coefficients"], bool(entry["quadratic"]), arrays["part_slopes"],
                                   arrays["setting_log_floor"], arrays["target_log_floor"])
        return cls(
            maker=entry["maker"], features=tuple(entry["features"]), settings=tuple(entry["settings"]),
            levels=Levels.of(list(entry["parts"])), response=response,
            residual_scale=arrays["residual_scale"],
            raw_tables={k: TailTable.from_arrays(arrays, f"raw{i}_") for i, k in enumerate(entry["raw_tables"])},
            residual_tables={k: TailTable.from_arrays(arrays, f"res{i}_") for i, k in enumerate(entry["residual_tables"])},
            calibration={c["unit"]: Calibration(arrays[f"cal{i}"], float(c["line"]), float(c["alpha"]))
                         for i, c in enumerate(entry["calibration"])},
            excursion_share=float(entry.get("excursion_share", EXCURSION_BAND_SHARE)),
            residual_evidence=str(entry.get("residual_evidence", "tails")), raw_weight=float(entry.get("raw_weight", 1.0)),
            baseline_halflife=float(entry.get("baseline_halflife", 0.0)), baseline_clip=float(entry.get("baseline_clip", 4.0)),
            baseline_state={k: arrays["baseline_state"][i] for i, k in enumerate(entry.get("baseline_parts", []))},
            neighbour_tables={k: TailTable.from_arrays(arrays, f"nbr{i}_") for i, k in enumerate(entry.get("neighbour_tables", []))},
            setting_ranges={k: arrays["setting_ranges"][i] for i, k in enumerate(entry.get("setting_range_parts", []))},
        )


def _band_ratios(table: TailTable, x: np.ndarray, share: float = EXCURSION_BAND_SHARE) -> np.ndarray:
    """Excursion ratios of ``x`` against the table's p0.1..p99.9 band, ``share`` of its width out."""
    low = np.array([np.interp(BAND_QUANTILES[0], TAIL_LEVELS, table.values[:, j]) for j in range(table.values.shape[1])])
    high = np.array([np.interp(BAND_QUANTILES[1], TAIL_LEVELS, table.values[:, j]) for j in range(table.values.shape[1])])
    return excursion_ratios(x, np.nan_to_num(low), np.nan_to_num(high), excursion_tolerance(low, high, share))


@dataclass(frozen=True)
class ConditionalScore:
    evidence: np.ndarray  # (rows,) evidence sum (the verdict's loss)
    fields: np.ndarray  # (rows, fields) per-field evidence (top_features)
    unit: np.ndarray  # (rows,) calibration unit: the part key, or FALLBACK
    score: np.ndarray  # (rows,) log p / log p_line
    line: np.ndarray  # (rows,) evidence sum at the line (the verdict's threshold)
    excursion: np.ndarray  # (rows,) worst gross-excursion ratio (> 1 alarms whatever the score)
    baseline_state: dict[str, np.ndarray]  # part key -> running baseline after these rows (empty: none kept)
