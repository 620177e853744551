"""Set points the maker's history says nothing about, and fields that never moved in history
(the lab set's inversion, issue 16): hand-computed boundaries of each rule, and the promise on a
synthetic maker — a set point the maker never varied changes, the fields it drives move far and
stay there: the first shot there is news, the shots after it are judged against their
predecessors and do not alarm."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model_store.conditional_fit import RESOLUTION_SHARE, UNSTEPPED_SHARE, fit_conditional, scale_floor
from model_store.config import ConditionalConfig
from model_store.serving.conditional import RESIDUAL_UNIT, SettingResponse, TableSet, part_keys
from model_store.serving.tails import EXCESS_GAIN, TailBank, TailTable
from tests.support.maker_frames import FEATURES, SETTINGS, expected, maker_frame


# -- where the response has nothing to go by ------------------------------------------------------
@pytest.fixture(scope="module")
def frame():
    return maker_frame(seed=0)


@pytest.fixture(scope="module")
def unit(frame):
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, np.zeros(len(frame)), ConditionalConfig())
    assert fitted is not None
    return fitted.unit


def test_outside_history_is_beyond_the_makers_span_by_more_than_its_width(unit) -> None:
    # speed ran 100..140 (width 40): outside below 60 and above 180; temp never varied from 50
    spanned = replace(unit, setting_span=np.array([[100.0, 50.0], [140.0, 50.0]]))
    keys = np.array(["any"] * 8, dtype=object)
    x = np.array([
        [180.0, 50.0],                                 # exactly one width above: not outside
        [np.nextafter(180.0, np.inf), 50.0],           # one ulp further: outside
        [60.0, 50.0],                                  # exactly one width below: not outside
        [np.nextafter(60.0, -np.inf), 50.0],           # outside
        [120.0, np.nextafter(50.0, np.inf)],           # a set point never varied, moved at all: outside
        [120.0, np.nan],                               # a missing set point is never outside
        [np.nan, np.nan],
        [140.0, 50.0],
    ])
    assert spanned.outside_history(keys, x).tolist() == [False, True, False, True, True, False, False, False]
    # never set in history (NaN span): nothing is outside
    assert not replace(unit, setting_span=np.full((2, 2), np.nan)).outside_history(keys, x).any()


def test_every_history_row_is_inside_history(unit, frame) -> None:
    keys = part_keys(frame["facility"].to_numpy(dtype=object), frame["item"].to_numpy(dtype=object))
    assert not unit.outside_history(keys, frame[list(SETTINGS)].to_numpy(float)).any()


# -- residual spreads of fields that barely move ---------------------------------------------------
def _response(target_scale, target_log_floor) -> SettingResponse:
    fields = len(target_scale)
    return SettingResponse(np.zeros(1), np.ones(1), np.zeros(fields), np.asarray(target_scale, dtype=float),
                           np.zeros((2, fields)), False, np.zeros((0, 2, fields)), np.full(1, np.nan),
                           np.asarray(target_log_floor, dtype=float))


def test_scale_floor_is_half_the_measurement_step_or_one_percent_of_a_field_that_never_moved() -> None:
    assert (RESOLUTION_SHARE, UNSTEPPED_SHARE) == (0.5, 0.01)
    production = np.array([
        # constant (linear)   stepped (linear)   stepped (logged)   never measured
        [4.0, 1.0, 10.0, np.nan],
        [4.0, 1.5, 10.2, np.nan],
        [4.0, 2.5, 11.0, np.nan],
        [4.0, 2.5, 10.2, np.nan],
    ])
    response = _response([2.0, 0.5, 0.1, 1.0], [np.nan, np.nan, 0.1, np.nan])
    floor = scale_floor(production, response)
    assert floor[0] == pytest.approx(0.01 * 4.0 / 2.0)  # no step: 1 % of the magnitude, in target scales
    assert floor[1] == pytest.approx(0.5 * 0.5 / 0.5)  # smallest gap 0.5
    assert floor[2] == pytest.approx(0.5 * (0.2 / 10.2) / 0.1)  # relative to the median in logs
    assert floor[3] == 0.0


def test_a_residual_table_of_one_value_has_a_spread_and_a_tolerance_of_one_residual_spread() -> None:
    assert RESIDUAL_UNIT == 1.0
    still = TailTable.fit(np.zeros((50, 1)))
    bank = TailBank.of([still], RESIDUAL_UNIT)
    assert bank.spread[0, 0] == 1.0
    assert TailBank.of([still]).spread[0, 0] == 1e-9  # a raw table keeps the magnitude rule (|0| * 1 % -> 1e-9)
    # beyond the table: the end's tail evidence plus EXCESS_GAIN per unit of distance
    at_end = bank.evidence(np.zeros(1, dtype=np.int64), np.array([[0.0]]))[0, 0]
    assert bank.evidence(np.zeros(1, dtype=np.int64), np.array([[3.0]]))[0, 0] == pytest.approx(at_end + EXCESS_GAIN * 3.0)
    tables = TableSet.of({"P": still}, 1, 1.0, RESIDUAL_UNIT)
    assert tables.tolerance[0, 0] == 1.0
    assert tables.band_ratios(np.zeros(1, dtype=np.int64), np.array([[2.0]]))[0, 0] == pytest.approx(2.0)
    # a column that varied keeps its own spread (the unit is a fallback, not a floor)
    varied = TailBank.of([TailTable.fit(np.linspace(-0.1, 0.1, 101)[:, None])], RESIDUAL_UNIT)
    assert varied.spread[0, 0] == pytest.approx(0.1, rel=0.02)


# -- the promise: a set point the maker never varied ---------------------------------------------
def _with_clamp(frame):
    out = frame.copy()
    out["clamp"] = 200.0  # never varied in history
    return out


@pytest.mark.parametrize("follow", [True, False])
def test_a_set_point_the_maker_never_varied_alarms_on_its_first_shot_only(frame, follow) -> None:
    history = _with_clamp(frame)
    settings_ = (*SETTINGS, "clamp")
    fitted = fit_conditional("M", FEATURES, settings_, history, np.zeros(len(history)),
                             replace(ConditionalConfig(), follow_new_settings=follow, baseline_shift_run=0))
    unit = fitted.unit
    n = 40
    speed, temp = np.full(n, 80.0), np.full(n, 215.0)
    facility, item = np.full(n, "F1", dtype=object), np.full(n, "A", dtype=object)
    rng = np.random.default_rng(4)
    production = expected(speed, temp, facility, item) + rng.normal(size=(n, 3)) * np.array([0.6, 2.0, 0.03])
    production[:, 0] += expected(speed, temp, facility, item)[:, 0]  # half the clamp speed: the fill field doubles,
    # which no history can say (~400 residual spreads)
    settings = np.column_stack([speed, temp, np.full(n, 100.0)])
    result = unit.score(settings, part_keys(facility, item), production)
    alarms = np.fmax(result.score, result.excursion) > 1.0
    assert alarms[0]  # the first shot at the new set point is news either way
    if follow:
        assert not alarms[1:].any()  # then each shot is judged against the one before it
    else:
        assert alarms[1:].all()  # the old behaviour: a baseline that walks 4 spreads at a time never arrives
    # (the level-shift rule, off here, would follow it after its first baseline_shift_run shots)
