"""Fitting the setting-conditioned scorer (model_store/conditional_fit.py) on a synthetic maker:
every part keeps its history whatever its lots, lines are set on held-out (later) days, and each
line stands for its rows' lot defect share (hand-computed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model_store.conditional_fit import SMALL_HISTORY_FLOOR, fit_conditional
from model_store.config import ConditionalConfig
from model_store.serving.conditional import FALLBACK, PART_SEPARATOR
from tests.support.maker_frames import FEATURES, SETTINGS, maker_frame

CONFIG = ConditionalConfig(calibration_share=0.3, min_alpha=0.002)


def _key(facility: str, item: str) -> str:
    return f"{facility}{PART_SEPARATOR}{item}"


def _part(frame: pd.DataFrame, facility: str, item: str) -> np.ndarray:
    return ((frame["facility"] == facility) & (frame["item"] == item)).to_numpy()


def test_a_part_whose_lots_are_all_dirty_still_gets_tables_and_a_line() -> None:
    frame = maker_frame(seed=1)
    dirty = _part(frame, "F2", "B")
    lot_rate = np.where(dirty, 0.4, 0.0)
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, lot_rate, CONFIG)
    assert fitted is not None
    unit, key = fitted.unit, _key("F2", "B")
    # dirty lots lower the part's weight in the response; they never remove its history
    assert key in unit.levels.parts and key in unit.raw_tables and key in unit.residual_tables
    assert unit.raw_tables[key].rows.min() == dirty.sum()  # no clean lot: all its rows make its tables
    assert unit.calibration[key].alpha == pytest.approx(0.4)  # its line stands for its own lots' share
    assert np.isfinite(unit.calibration[key].line)
    # and its rows are judged by its own line, not the maker's
    rows = frame[dirty].head(5)
    keys = np.array([key] * 5, dtype=object)
    result = unit.score(rows[list(SETTINGS)].to_numpy(), keys, rows[list(FEATURES)].to_numpy())
    assert result.unit.tolist() == [key] * 5


def test_a_maker_with_too_few_rows_has_no_unit() -> None:
    frame = maker_frame(seed=2).head(2 * SMALL_HISTORY_FLOOR - 1)
    assert fit_conditional("M", FEATURES, SETTINGS, frame, np.zeros(len(frame)), CONFIG) is None
    empty = frame.head(0)
    assert fit_conditional("M", FEATURES, SETTINGS, empty, np.zeros(0), CONFIG) is None


def test_held_out_scores_exist_only_for_the_later_days() -> None:
    frame = maker_frame(seed=3, days=8)
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, np.zeros(len(frame)), CONFIG)
    # 8 days, calibration_share 0.3: the cut is day floor(8 x 0.7) = 5 (the 5th day, 2026-01-05);
    # the fit on days 1..5 scores days 6..8
    later = (frame["lot_date"] > "2026-01-05").to_numpy()
    assert later.sum() == 3 * 4 * 60
    held = fitted.held_out_score
    assert np.isnan(held[~later]).all() and np.isfinite(held[later]).all()
    assert (held[later] >= 0).all()


def test_with_fewer_than_three_days_alternate_rows_are_held_out() -> None:
    frame = maker_frame(seed=4, days=2, rows_per_day=200)
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, np.zeros(len(frame)), CONFIG)
    odd = np.arange(len(frame)) % 2 == 1
    assert np.isnan(fitted.held_out_score[~odd]).all() and np.isfinite(fitted.held_out_score[odd]).all()


def _daily_rates(frame: pd.DataFrame, rates: dict[tuple[str, str], dict[str, float]]) -> np.ndarray:
    """Per row: its lot's (part, day) rate, 0 where not listed."""
    out = np.zeros(len(frame))
    for (facility, item), days in rates.items():
        for day, rate in days.items():
            out[_part(frame, facility, item) & (frame["lot_date"] == day).to_numpy()] = rate
    return out


def test_each_line_stands_for_its_held_out_rows_lot_defect_share_clipped() -> None:
    frame = maker_frame(seed=5, days=8)  # held out: days 6..8, 60 rows per part and day
    held_days = ("2026-01-06", "2026-01-07", "2026-01-08")
    lot_rate = _daily_rates(frame, {
        ("F1", "A"): dict(zip(held_days, (0.03, 0.0, 0.06))),  # mean over its held-out rows: 0.03
        ("F2", "A"): dict(zip(held_days, (0.9, 0.9, 0.9))),  # 0.9: clipped to 0.5
        ("F1", "B"): {"2026-01-01": 0.3},  # a training day only: its held-out share is 0 -> min_alpha
    })
    lot_rate[_part(frame, "F2", "B")] = np.nan  # lots never counted: no share to match
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, lot_rate, CONFIG)
    calibration = fitted.unit.calibration
    assert calibration[_key("F1", "A")].alpha == pytest.approx(0.03)
    assert calibration[_key("F2", "A")].alpha == 0.5
    assert calibration[_key("F1", "B")].alpha == CONFIG.min_alpha
    assert calibration[_key("F2", "B")].alpha == CONFIG.min_alpha
    # the maker's line: every held-out row with a counted lot, (0.03 + 0.9 + 0) / 3 = 0.31
    assert calibration[FALLBACK].alpha == pytest.approx(0.31)
    for key, unit in calibration.items():
        # the line is the held-out evidence quantile at 1 - alpha (all sums kept: fewer than the cap)
        assert len(unit.scores) == 180 if key != FALLBACK else len(unit.scores) == 720
        assert unit.line == pytest.approx(float(np.quantile(unit.scores, 1.0 - unit.alpha))), key
        assert np.all(np.diff(unit.scores) >= 0)


def test_the_makers_line_comes_from_parts_new_on_the_held_out_days_when_there_are_enough() -> None:
    frame = maker_frame(seed=6, days=8)
    new = maker_frame(seed=7, days=8, parts=(("F3", "C"),))
    new = new[(new["lot_date"] > "2026-01-05").to_numpy()]  # first seen on the held-out days
    frame = pd.concat([frame, new], ignore_index=True)
    lot_rate = np.where(_part(frame, "F3", "C"), 0.1, 0.0)
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, lot_rate, CONFIG)
    assert fitted.unit.calibration[FALLBACK].alpha == pytest.approx(0.1)
    assert len(fitted.unit.calibration[FALLBACK].scores) == len(new)
