"""Fit the setting-conditioned scorer of one maker (see :mod:`model_store.serving.conditional`).

History in, a :class:`ConditionalUnit` out; no I/O. Every row of the maker is used: a lot's
defect share only lowers the weight of its rows in the response fit, so a part whose lots were
all dirty still has a response and tables. Lines are set on held-out evidence: a fit on the
earlier days scores the latest days (as the unit will score new production), and the final unit
is fitted on everything.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from model_store.config import ConditionalConfig
from model_store.serving.baseline import running_baseline
from model_store.serving.conditional import (
    FALLBACK,
    Calibration,
    ConditionalUnit,
    Levels,
    SettingResponse,
    design_matrix,
    log_floors,
    part_keys,
)
from model_store.serving.tails import TailTable

ROW_CHUNK = 20000  # rows per block of the normal equations: bounds the design matrix's memory
MAD_TO_SD = 1.4826
# A residual spread is never below this share of its field's measurement step (the smallest gap
# between two values in history; relative to the field's median for a field modelled in logs): a
# field a sensor reports in steps (an injection time to 0.01 s) can sit on one value for a whole
# history, its MAD 0, and its next step would be "infinitely" far out. A field that never took
# two values has no step to go by: its spread is at least UNSTEPPED_SHARE of its magnitude.
RESOLUTION_SHARE = 0.5
UNSTEPPED_SHARE = 0.01
MIN_RESIDUAL_SCALE = 1e-6  # normalised units: the last floor (a field with no step at all)
SMALL_HISTORY_FLOOR = 20  # rows: below this a table, a spread or a line is noise
CALIBRATION_POINTS = 2000  # held-out evidence sums kept per unit (quantiles of all of them)


def _robust_center_scale(x: np.ndarray, floor_share: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Median and p5..p95 width per column (a constant column gets 1 % of its magnitude, or 1)."""
    center = np.nan_to_num(np.nanmedian(x, axis=0)) if len(x) else np.zeros(x.shape[1])
    if len(x):
        width = np.nan_to_num(np.nanpercentile(x, 95, axis=0) - np.nanpercentile(x, 5, axis=0))
    else:
        width = np.zeros(x.shape[1])
    fallback = np.where(np.abs(center) > 0, np.abs(center) * floor_share, 1.0)
    return center, np.where(width > 0, width, fallback)


def _solve_ridge(x_blocks: list[np.ndarray], y_blocks: list[np.ndarray], w_blocks: list[np.ndarray], ridge: float) -> np.ndarray:
    columns = x_blocks[0].shape[1]
    gram = np.zeros((columns, columns))
    moment = np.zeros((columns, y_blocks[0].shape[1]))
    for x, y, w in zip(x_blocks, y_blocks, w_blocks):
        xw = x * w[:, None]
        gram += x.T @ xw
        moment += xw.T @ y
    penalty = ridge * np.eye(columns)
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    return np.linalg.lstsq(gram + penalty, moment, rcond=None)[0]


def _fit_response(settings: np.ndarray, codes: np.ndarray, counts: tuple[int, int, int], production: np.ndarray,
                  weight: np.ndarray, config: ConditionalConfig) -> SettingResponse:
    no_logs = (np.full(settings.shape[1], np.nan), np.full(production.shape[1], np.nan))
    s_floor, t_floor = (log_floors(settings), log_floors(production)) if config.log_positive else no_logs
    slopes = np.zeros((0, settings.shape[1] + 1, production.shape[1]))
    logs = SettingResponse(np.zeros(settings.shape[1]), np.ones(settings.shape[1]), np.zeros(production.shape[1]),
                           np.ones(production.shape[1]), np.zeros((0, production.shape[1])), config.quadratic, slopes, s_floor, t_floor)
    s_center, s_scale = _robust_center_scale(logs.transform_settings(settings))
    t_center, t_scale = _robust_center_scale(logs.transform_targets(production))
    probe = SettingResponse(s_center, s_scale, t_center, t_scale, np.zeros((0, production.shape[1])), config.quadratic, slopes,
                            s_floor, t_floor)
    target = (probe.transform_targets(production) - t_center) / t_scale
    missing = np.isnan(target)
    target = np.where(missing, 0.0, target)
    scaled = probe.scale_settings(settings)
    chunks = range(0, len(target), ROW_CHUNK)
    x_blocks = [design_matrix(scaled[i:i + ROW_CHUNK], codes[i:i + ROW_CHUNK], counts, config.quadratic) for i in chunks]
    y_blocks = [target[i:i + ROW_CHUNK] for i in chunks]
    keep = weight * ~missing.all(axis=1)
    coefficients = _solve_ridge(x_blocks, y_blocks, [keep[i:i + ROW_CHUNK] for i in chunks], config.ridge)
    # Trim: shots far off the first fit (defects, glitches) must not pull the response.
    outlier = np.zeros(len(target), dtype=bool)
    for _ in range(config.trim_rounds):
        residual = np.where(missing, 0.0, target - np.vstack([x @ coefficients for x in x_blocks]))
        spread = np.median(np.abs(residual), axis=0) * MAD_TO_SD + 1e-9
        outlier = (np.abs(residual) / spread > config.trim_z).any(axis=1)
        coefficients = _solve_ridge(x_blocks, y_blocks, [(keep * ~outlier)[i:i + ROW_CHUNK] for i in chunks], config.ridge)
    left = np.where(missing, 0.0, target - np.vstack([x @ coefficients for x in x_blocks]))
    slopes = _part_slopes(scaled, codes[:, 0], counts[0], left, keep * ~outlier, config)
    return SettingResponse(s_center, s_scale, t_center, t_scale, coefficients, config.quadratic, slopes, s_floor, t_floor)


def _part_slopes(scaled: np.ndarray, part: np.ndarray, parts: int, left: np.ndarray, weight: np.ndarray,
                 config: ConditionalConfig) -> np.ndarray:
    """Each part's own linear response on what the maker-wide fit leaves: parts differ in how a
    set point moves their values (a thick wall cools slower). Shrunk towards 0 by a penalty that
    grows with the part's few rows, so a part that ran one setting keeps the maker's slopes."""
    k = scaled.shape[1]
    out = np.zeros((parts, k + 1, left.shape[1]))
    if not config.part_slopes:
        return out
    for p in range(parts):
        rows = np.flatnonzero((part == p) & (weight > 0))
        if len(rows) < config.min_part_rows:
            continue
        x = np.hstack([np.ones((len(rows), 1)), scaled[rows]])
        w = weight[rows]
        penalty = config.part_ridge * np.eye(k + 1)
        penalty[0, 0] = 0.0
        out[p] = np.linalg.lstsq(x.T @ (x * w[:, None]) + penalty, (x * w[:, None]).T @ left[rows], rcond=None)[0]
    return out


def scale_floor(production: np.ndarray, response: SettingResponse) -> np.ndarray:
    """Per field, the least residual spread in the response's normalised units (relative to the
    median for a field modelled in logs): RESOLUTION_SHARE of the smallest gap between two
    distinct values in history, or UNSTEPPED_SHARE of the magnitude for a field that never took
    two values (0 for a field never measured)."""
    out = np.zeros(production.shape[1])
    logged = np.isfinite(response.target_log_floor)
    for j in range(production.shape[1]):
        column = production[:, j][np.isfinite(production[:, j])]
        if not len(column):
            continue
        magnitude = float(np.median(np.abs(column)))
        values = np.unique(column)
        if len(values) >= 2:
            floor = RESOLUTION_SHARE * float(np.diff(values).min())
        else:
            floor = UNSTEPPED_SHARE * magnitude
        if logged[j]:
            floor /= max(magnitude, 1e-300)
        out[j] = floor / response.target_scale[j]
    return out


def _residual_scale(residual: np.ndarray, part_column: np.ndarray, parts: int, min_rows: int,
                    floor: np.ndarray | float = MIN_RESIDUAL_SCALE) -> np.ndarray:
    """MAD of the residuals per part (rows >= min_rows, else the maker's), floored at 5 % of the
    maker's, and every one at ``floor`` (per field; see RESOLUTION_SHARE)."""
    floor = np.maximum(floor, MIN_RESIDUAL_SCALE)
    maker = np.nan_to_num(np.nanmedian(np.abs(residual - np.nanmedian(residual, axis=0)), axis=0) * MAD_TO_SD)
    maker = np.maximum(maker, floor)
    out = np.tile(maker, (parts + 1, 1))
    for p in range(parts):
        rows = residual[part_column == p]
        if len(rows) >= min_rows:
            mad = np.nanmedian(np.abs(rows - np.nanmedian(rows, axis=0)), axis=0) * MAD_TO_SD
            out[p] = np.maximum(np.maximum(np.nan_to_num(mad, nan=maker), maker * 0.05), floor)
    return out


def _clean_rows(rows: np.ndarray, lot_rate: np.ndarray, config: ConditionalConfig) -> np.ndarray:
    """A part's tables come from its clean lots when they hold enough shots, else from all its rows."""
    clean = rows[np.nan_to_num(lot_rate[rows], nan=1.0) < config.clean_lot_rate]
    return clean if len(clean) >= config.min_part_rows else rows


def _fit_unit(maker: str, features: tuple[str, ...], settings_fields: tuple[str, ...], settings: np.ndarray,
              keys: np.ndarray, production: np.ndarray, lot_rate: np.ndarray, order: np.ndarray,
              config: ConditionalConfig) -> ConditionalUnit:
    """Response, residual scales, running baselines and tail tables on these rows (``order``:
    their time order; calibration left empty). Residual tables hold ``z``; with a baseline,
    neighbour tables hold ``z`` less each part's running baseline, run from the history's first
    shot on, as the unit will judge new shots."""
    levels = Levels.of(keys.tolist())
    codes = levels.codes(keys)
    parts, column = levels.parts, codes[:, 0]
    weight = np.clip(1.0 - np.nan_to_num(lot_rate, nan=config.dirty_lot_rate / 2) / config.dirty_lot_rate, config.min_weight, 1.0)
    response = _fit_response(settings, codes, levels.counts, production, weight, config)
    residual = response.residuals(settings, codes, production, levels.counts)
    scale = _residual_scale(residual, column, len(parts), config.min_part_rows,
                            scale_floor(production, response))
    z = residual / scale[column]
    baseline_state: dict[str, np.ndarray] = {}
    d = None
    if config.baseline_halflife > 0:
        baseline, baseline_state = running_baseline(z, keys, order, config.baseline_halflife, config.baseline_clip, {},
                                                    shift_run=config.baseline_shift_run)
        d = z - baseline
    raw_tables: dict[str, TailTable] = {}
    setting_ranges: dict[str, np.ndarray] = {}
    clean = _clean_rows(np.arange(len(z)), lot_rate, config)
    residual_tables: dict[str, TailTable] = {FALLBACK: TailTable.fit(z[clean])}
    neighbour_tables: dict[str, TailTable] = {FALLBACK: TailTable.fit(d[clean])} if d is not None else {}
    for key, p in parts.items():
        rows = np.flatnonzero(column == p)
        if len(rows) < config.min_part_rows:
            continue
        run = settings[rows]
        run = run[np.isfinite(run).all(axis=1)]
        if len(run):
            setting_ranges[key] = np.stack([run.min(axis=0), run.max(axis=0)])
        rows = _clean_rows(rows, lot_rate, config)
        raw_tables[key] = TailTable.fit(production[rows])
        residual_tables[key] = TailTable.fit(z[rows])
        if d is not None:
            neighbour_tables[key] = TailTable.fit(d[rows])
    return ConditionalUnit(maker, features, settings_fields, levels, response, scale, raw_tables, residual_tables, {},
                           config.excursion_share, config.residual_evidence, config.raw_weight,
                           config.baseline_halflife, config.baseline_clip, baseline_state, neighbour_tables, setting_ranges,
                           config.lasting_excursion_ratio, setting_span(settings), config.follow_new_settings,
                           config.follow_new_parts, config.lasting_at_line, config.baseline_shift_run)


def _held_out_evidence(unit: ConditionalUnit, settings: np.ndarray, keys: np.ndarray, production: np.ndarray,
                       order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evidence sums of rows a unit did not train on (their running baselines carried on from
    where the unit's history ended): with the part's own tables where the unit has them (NaN
    elsewhere), and with the maker's fallback table for every row; and each row's worst
    excursion ratio (fields and set points, as the unit will judge it)."""
    z, d, _ = unit.judged_residuals(settings, keys, production, order)
    own = np.full(len(keys), np.nan)
    for key in np.unique(keys):
        if key in unit.raw_tables:
            rows = np.flatnonzero(keys == key)
            own[rows] = (unit.field_evidence(key, z[rows], None if d is None else d[rows])
                         + unit.raw_evidence(key, production[rows])).sum(axis=1)
    fallback = unit.field_evidence(FALLBACK, z, d).sum(axis=1)
    excursion = unit.excursions(keys, production, z, d, settings)
    set_ratio = unit.setting_excursions(settings)
    if set_ratio.shape[1]:
        excursion = np.maximum(excursion, set_ratio.max(axis=1))
    return own, fallback, excursion


def _calibration(evidence: np.ndarray, lot_rate: np.ndarray, config: ConditionalConfig) -> Calibration:
    rates = lot_rate[np.isfinite(lot_rate)]
    share = float(rates.mean()) if len(rates) else config.min_alpha
    alpha = float(np.clip(share, config.min_alpha, 0.5))
    scores = np.sort(evidence)
    if len(scores) > CALIBRATION_POINTS:
        scores = np.quantile(scores, np.linspace(0.0, 1.0, CALIBRATION_POINTS))
    line = float(np.quantile(evidence, 1.0 - alpha))
    return Calibration(scores, line, alpha)


def setting_span(settings: np.ndarray) -> np.ndarray:
    """(2, settings): the lowest and highest value of each set point in the history (NaN: never set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no span
        return np.stack([np.nanmin(settings, axis=0), np.nanmax(settings, axis=0)]) if len(settings) else \
            np.full((2, settings.shape[1]), np.nan)


@dataclass(frozen=True)
class FittedConditional:
    unit: ConditionalUnit
    held_out_score: np.ndarray  # per history row: its score by a fit that did not see its day (NaN: none)
    # per history row: its worst excursion ratio by that fit (NaN where it has no held-out score);
    # the verdict's score is the larger of the two
    held_out_excursion: np.ndarray | None = None


def fit_conditional(maker: str, features: tuple[str, ...], settings_fields: tuple[str, ...], frame: pd.DataFrame,
                    lot_rate: np.ndarray, config: ConditionalConfig) -> FittedConditional | None:
    """The maker's unit from its (state-imputed) canonical history; None without enough rows.

    A small history (a lab run of a few hundred shots) lowers the row floors in proportion, down
    to ``SMALL_HISTORY_FLOOR``: a tenth of the history makes a part, a fifth of the held-out days
    a line of its own.
    """
    if len(frame) < 2 * SMALL_HISTORY_FLOOR:
        return None
    config = replace(config, min_part_rows=min(config.min_part_rows, max(SMALL_HISTORY_FLOOR, len(frame) // 10)),
                     min_calibration_rows=min(config.min_calibration_rows, max(SMALL_HISTORY_FLOOR, len(frame) // 20)))
    settings = frame[list(settings_fields)].to_numpy(dtype=float)
    production = frame[list(features)].to_numpy(dtype=float)
    keys = part_keys(frame["facility"].astype(str).to_numpy(dtype=object), frame["item"].astype(str).to_numpy(dtype=object))
    lot_rate = np.asarray(lot_rate, dtype=float)
    time = frame["timestamp"].to_numpy()
    days = pd.Series(frame["lot_date"].astype(str).to_numpy())
    ordered = sorted(days.unique())
    # Forward, as the unit will be used: fit on the earlier days, score the later ones (a line
    # matched on days the fit saw alarms too little on new production, and on alternate days too
    # little novelty). Without enough days, alternate rows.
    if len(ordered) >= 3:
        cut = ordered[int(np.floor(len(ordered) * (1.0 - config.calibration_share))) - 1]
        held_mask = (days > cut).to_numpy()
    else:
        held_mask = np.arange(len(frame)) % 2 == 1
    own = np.full(len(frame), np.nan)
    fallback = np.full(len(frame), np.nan)
    excursion = np.full(len(frame), np.nan)
    train, held = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
    if len(train) >= config.min_part_rows and len(held):
        unit = _fit_unit(maker, features, settings_fields, settings[train], keys[train], production[train], lot_rate[train],
                         _time_order(time[train]), config)
        own[held], fallback[held], excursion[held] = _held_out_evidence(unit, settings[held], keys[held], production[held],
                                                                         _time_order(time[held]))
    final = _fit_unit(maker, features, settings_fields, settings, keys, production, lot_rate, _time_order(time), config)
    calibration: dict[str, Calibration] = {}
    scored = np.isfinite(fallback)
    if scored.sum() < config.min_calibration_rows:
        return None
    # The fallback judges parts with little or no history of their own: its line comes from the
    # held-out rows of parts the earlier days' fit had not seen, when there are enough of them
    # (a known part scored by the maker's table is less surprising than a new one).
    seen = set(keys[np.flatnonzero(~held_mask)].tolist())
    novel = scored & ~np.isin(keys, list(seen))
    pool = novel if novel.sum() >= config.min_calibration_rows else scored
    calibration[FALLBACK] = _calibration(fallback[pool], lot_rate[pool], config)
    for key in final.raw_tables:
        rows = np.flatnonzero((keys == key) & np.isfinite(own))
        if len(rows) >= config.min_calibration_rows:
            calibration[key] = _calibration(own[rows], lot_rate[rows], config)
    unit = ConditionalUnit(maker, features, settings_fields, final.levels, final.response, final.residual_scale,
                           final.raw_tables,  # every part's, for its excursion band; only calibrated parts judge by it
                           final.residual_tables, calibration, config.excursion_share, config.residual_evidence,
                           config.raw_weight, config.baseline_halflife, config.baseline_clip, final.baseline_state,
                           final.neighbour_tables, final.setting_ranges, config.lasting_excursion_ratio,
                           setting_span(settings), config.follow_new_settings, config.follow_new_parts,
                           config.lasting_at_line, config.baseline_shift_run)
    held_out = np.full(len(frame), np.nan)
    own_unit = np.array([k in calibration for k in keys.tolist()], dtype=bool) & np.isfinite(own)
    held_out[own_unit] = _scores_by_unit(unit, keys[own_unit], own[own_unit])
    rest = ~own_unit & scored
    held_out[rest] = calibration[FALLBACK].score(fallback[rest])
    return FittedConditional(unit, held_out, np.where(np.isfinite(held_out), excursion, np.nan))


def _time_order(time: np.ndarray) -> np.ndarray:
    return np.argsort(time, kind="stable")


def _scores_by_unit(unit: ConditionalUnit, keys: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    out = np.zeros(len(keys))
    for key in np.unique(keys):
        rows = keys == key
        out[rows] = unit.calibration[key].score(evidence[rows])
    return out
