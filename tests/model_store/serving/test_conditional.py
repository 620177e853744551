"""The setting-conditioned scorer's serving side (model_store/serving/conditional.py): the
calibration's one scale, hand-computed; part levels and the design matrix; persistence; and its two
promises on a maker whose production is a known linear function of its set points: a setting change
alone never alarms, a production value pushed far out always does."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.conditional_fit import fit_conditional
from model_store.config import ConditionalConfig
from model_store.serving.baseline import smoothing
from model_store.serving.conditional import (
    CONDITIONAL,
    FALLBACK,
    PART_SEPARATOR,
    Calibration,
    ConditionalUnit,
    Levels,
    design_matrix,
    log_floors,
    part_keys,
)
from model_store.serving.excursions import lasting_rank
from model_store.serving.store_format import ConditionalUnitEntry, read
from tests.support.maker_frames import FEATURES, NOISE, SETTINGS, SPEEDS, TEMPS, expected, maker_frame

# -- Calibration: survival and score --------------------------------------------------------------
TINY = Calibration(np.array([1.0, 2.0, 3.0, 4.0]), line=3.0, alpha=0.25)  # n = 4


def test_survival_inside_the_calibration_range_is_the_interpolated_conformal_tail() -> None:
    # rank interpolated on 1..4, p = (1 + n - rank) / (n + 1)
    p = TINY.survival(np.array([1.0, 2.5, 3.0, 4.0]))
    assert p == pytest.approx([4 / 5, 2.5 / 5, 2 / 5, 1 / 5])


def test_survival_below_the_range_is_one() -> None:
    assert TINY.survival(np.array([0.0, 0.999, -5.0])) == pytest.approx([1.0, 1.0, 1.0])


def test_survival_beyond_the_range_decays_from_the_last_rank() -> None:
    # spread = max - the median-ish score c[int(0.5 * 3)] = 4 - 2 = 2; p = exp(-(e - 4) / 2) / 5
    p = TINY.survival(np.array([5.0, 6.0, 24.0]))
    assert p == pytest.approx([np.exp(-0.5) / 5, np.exp(-1.0) / 5, np.exp(-10.0) / 5])
    # continuous at the maximum, and never 0 (the score stays finite)
    assert TINY.survival(np.array([4.0 + 1e-12]))[0] == pytest.approx(0.2)
    assert TINY.survival(np.array([1e9]))[0] > 0


def test_score_is_exactly_one_at_the_line_and_log_p_over_log_p_line_elsewhere() -> None:
    assert TINY.score(np.array([3.0]))[0] == 1.0
    # p_line = 2/5; score = log p / log(2/5)
    assert TINY.score(np.array([4.0, 2.0, 0.5])) == pytest.approx(
        [np.log(0.2) / np.log(0.4), np.log(0.6) / np.log(0.4), 0.0])
    # beyond the range it keeps growing with the evidence: log p = -(e - 4) / 2 - log 5
    assert TINY.score(np.array([24.0]))[0] == pytest.approx((-10.0 - np.log(5.0)) / np.log(0.4))
    for line in (1.0, 1.7, 2.5, 4.0):
        unit = Calibration(TINY.scores, line=line, alpha=0.1)
        assert unit.score(np.array([line]))[0] == 1.0, line


def test_score_above_one_is_evidence_above_the_line() -> None:
    e = np.linspace(-1.0, 30.0, 3101)
    s = TINY.score(e)
    assert np.array_equal(s > 1.0, e > TINY.line)


def test_a_line_below_every_held_out_sum_still_alarms_only_beyond_it() -> None:
    # p_line = 1 (no held-out sum at or below the line): log 1 = 0 must not divide
    low = Calibration(TINY.scores, line=0.5, alpha=0.5)
    s = low.score(np.array([0.0, 0.5, 1.0, 4.0]))
    assert np.all(np.isfinite(s))
    assert not (s[:2] > 1).any() and (s[2:] > 1).all()


@settings(max_examples=60, deadline=None)
@given(sums=st.lists(st.floats(0, 100), min_size=2, max_size=40), alpha=st.floats(0.002, 0.5),
       a=st.floats(-10, 500), b=st.floats(-10, 500))
def test_score_is_monotone_and_one_at_the_line(sums, alpha, a, b) -> None:
    scores = np.sort(np.array(sums))
    line = float(np.quantile(scores, 1.0 - alpha))
    unit = Calibration(scores, line, alpha)
    low, high = sorted((a, b))
    s = unit.score(np.array([low, high, line]))
    assert np.all(np.isfinite(s)) and s[1] >= s[0] - 1e-12
    assert s[2] == 1.0


# -- levels, design, floors -------------------------------------------------------------------------
def _key(facility: str, item: str) -> str:
    return f"{facility}{PART_SEPARATOR}{item}"


def test_part_keys_join_facility_and_item_with_the_separator() -> None:
    keys = part_keys(np.array(["F1", "F2"], dtype=object), np.array(["A", "B"], dtype=object))
    assert keys.tolist() == [_key("F1", "A"), _key("F2", "B")]


def test_levels_number_parts_facilities_and_items_in_sorted_order() -> None:
    levels = Levels.of([_key("F2", "B"), _key("F1", "A"), _key("F1", "B"), _key("F1", "A")])
    assert levels.parts == {_key("F1", "A"): 0, _key("F1", "B"): 1, _key("F2", "B"): 2}
    assert levels.facilities == {"F1": 0, "F2": 1} and levels.items == {"A": 0, "B": 1}
    assert levels.counts == (3, 2, 2)


def test_codes_give_a_new_pairing_of_a_known_machine_and_item_both_offsets() -> None:
    levels = Levels.of([_key("F1", "A"), _key("F2", "B")])
    codes = levels.codes(np.array([_key("F1", "A"), _key("F1", "B"), _key("F9", "B"), _key("F1", "Z"), _key("F9", "Z")],
                                  dtype=object))
    assert codes.tolist() == [
        [0, 0, 0],    # a known part
        [-1, 0, 1],   # new pairing: no part column, but the machine's and the item's
        [-1, -1, 1],  # unknown machine, known item
        [-1, 0, -1],  # known machine, unknown item
        [-1, -1, -1],  # nothing known
    ]


def test_design_matrix_column_layout() -> None:
    scaled = np.array([[1.0, 2.0], [3.0, -1.0]])
    codes = np.array([[1, 0, -1], [-1, 1, 0]])
    counts = (2, 2, 2)
    linear = design_matrix(scaled, codes, counts, quadratic=False)
    # [1, s1, s2, part0, part1, fac0, fac1, item0, item1]
    assert linear.tolist() == [
        [1, 1, 2, 0, 1, 1, 0, 0, 0],
        [1, 3, -1, 0, 0, 0, 1, 1, 0],
    ]
    quad = design_matrix(scaled, codes, counts, quadratic=True)
    # [1, s1, s2, s1^2, s2^2, s1 s2, one-hots...]
    assert quad.shape == (2, 12)
    assert quad[:, :6].tolist() == [[1, 1, 2, 1, 4, 2], [1, 3, -1, 9, 1, -3]]
    assert np.array_equal(quad[:, 6:], linear[:, 3:])
    three = design_matrix(np.ones((1, 3)), np.full((1, 3), -1), (0, 0, 0), quadratic=True)
    assert three.shape == (1, 1 + 3 + 3 + 3)  # pairs (i < j) of three set points: 3


def test_log_floors_are_one_percent_of_the_smallest_positive_column_only() -> None:
    x = np.array([[2.0, -1.0, 0.0, np.nan, 5.0], [4.0, 3.0, 1.0, np.nan, np.nan]])
    floors = log_floors(x)
    assert floors[0] == pytest.approx(0.02) and floors[4] == pytest.approx(0.05)
    assert np.isnan(floors[1]) and np.isnan(floors[2]) and np.isnan(floors[3])  # negative, a zero, no value
    assert np.isnan(log_floors(np.zeros((0, 2)))).all()


# -- a fitted unit on a synthetic maker ------------------------------------------------------------
@pytest.fixture(scope="module")
def frame():
    return maker_frame(seed=0)


@pytest.fixture(scope="module")
def unit(frame) -> ConditionalUnit:
    fitted = fit_conditional("M", FEATURES, SETTINGS, frame, np.zeros(len(frame)), ConditionalConfig())
    assert fitted is not None
    return fitted.unit


def _records(n: int, seed: int, parts=(("F1", "A"), ("F1", "B"), ("F2", "A"), ("F2", "B"))):
    rng = np.random.default_rng(seed)
    settings_ = np.column_stack([rng.uniform(min(SPEEDS), max(SPEEDS), n), rng.uniform(min(TEMPS), max(TEMPS), n)])
    chosen = [parts[k] for k in rng.integers(0, len(parts), n)]
    facility = np.array([p[0] for p in chosen], dtype=object)
    item = np.array([p[1] for p in chosen], dtype=object)
    return settings_, facility, item


def test_the_unit_knows_every_part_and_scores_with_each_parts_own_line(unit, frame) -> None:
    assert CONDITIONAL == "conditional"
    assert set(unit.calibration) == {FALLBACK, *set(part_keys(frame["facility"].to_numpy(), frame["item"].to_numpy()))}
    settings_, facility, item = _records(50, seed=3)
    keys = part_keys(facility, item)
    result = unit.score(settings_, keys, expected(settings_[:, 0], settings_[:, 1], facility, item))
    assert result.unit.tolist() == keys.tolist()
    assert result.fields.shape == (50, len(FEATURES)) and np.allclose(result.fields.sum(axis=1), result.evidence)
    assert np.all(result.line == np.array([unit.calibration[k].line for k in keys]))


def test_save_and_load_give_identical_scores(unit, tmp_path) -> None:
    entry = unit.to_files(tmp_path / "unit.npz")
    import json
    entry = json.loads(json.dumps({**entry, "artifact": "unit.npz"}))  # the manifest holds it as JSON
    back = ConditionalUnit.from_files(read(ConditionalUnitEntry.from_dict, entry), tmp_path / "unit.npz")
    settings_, facility, item = _records(200, seed=4, parts=(("F1", "A"), ("F2", "B"), ("F2", "C"), ("F9", "A")))
    production = expected(settings_[:, 0], settings_[:, 1], np.where(facility == "F9", "F1", facility),
                          np.where(item == "C", "A", item))
    production[::7, 1] += 500.0
    production[::11, 2] = np.nan
    keys = part_keys(facility, item)
    a, b = unit.score(settings_, keys, production), back.score(settings_, keys, production)
    for name in ("evidence", "fields", "score", "line", "excursion"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.unit.tolist() == b.unit.tolist()
    assert back.features == unit.features and back.settings == unit.settings and back.levels == unit.levels
    assert {k: (c.line, c.alpha) for k, c in back.calibration.items()} == {k: (c.line, c.alpha) for k, c in unit.calibration.items()}
    assert back.baseline_halflife == unit.baseline_halflife > 0 and back.baseline_clip == unit.baseline_clip
    assert np.array_equal(back.setting_span, unit.setting_span) and unit.setting_span is not None
    assert set(back.baseline_state) == set(unit.baseline_state) == set(unit.levels.parts)
    assert all(np.array_equal(back.baseline_state[k], unit.baseline_state[k]) for k in unit.baseline_state)
    assert set(back.neighbour_tables) == set(unit.neighbour_tables) == set(unit.residual_tables)


def test_a_new_pairing_of_a_known_machine_and_item_is_judged_by_the_makers_line(tmp_path) -> None:
    three = maker_frame(seed=5, parts=(("F1", "A"), ("F1", "B"), ("F2", "A")))
    fitted = fit_conditional("M", FEATURES, SETTINGS, three, np.zeros(len(three)), ConditionalConfig())
    settings_, facility, item = _records(300, seed=6, parts=(("F2", "B"),))
    result = fitted.unit.score(settings_, part_keys(facility, item), expected(settings_[:, 0], settings_[:, 1], facility, item))
    assert set(result.unit.tolist()) == {FALLBACK}
    # the machine's and the item's offsets both apply: its usual production is not a defect
    assert (result.score <= 1.0).all() and (result.excursion <= 1.0).all()


# Noise well above the model's form error: the response is fitted in logs (multiplicative
# physics), and a linear maker is then only approximated; with noise of a few tenths of a per
# cent the approximation alone can cross the line on a part's unrun corner of the setting range.
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), record_seed=st.integers(0, 10_000))
def test_a_setting_change_alone_never_alarms(seed, record_seed) -> None:
    history = maker_frame(seed=seed, noise_scale=3.0)
    unit = fit_conditional("M", FEATURES, SETTINGS, history, np.zeros(len(history)), ConditionalConfig()).unit
    settings_, facility, item = _records(400, seed=record_seed)  # set points never run, inside the range
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    result = unit.score(settings_, part_keys(facility, item), production)
    assert (result.score <= 1.0).all(), float(result.score.max())
    assert (result.excursion <= 1.0).all(), float(result.excursion.max())


def test_a_setting_change_alone_never_alarms_when_the_response_is_linear_too() -> None:
    # the same promise with the response in the maker's own (linear) form, at the small noise
    history = maker_frame(seed=7)
    config = ConditionalConfig(log_positive=False)
    unit = fit_conditional("M", FEATURES, SETTINGS, history, np.zeros(len(history)), config).unit
    settings_, facility, item = _records(2000, seed=8)
    result = unit.score(settings_, part_keys(facility, item), expected(settings_[:, 0], settings_[:, 1], facility, item))
    assert (result.score <= 1.0).all() and (result.excursion <= 1.0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record_seed=st.integers(0, 10_000), field=st.integers(0, len(FEATURES) - 1), spans=st.floats(1.0, 50.0),
       up=st.booleans())
def test_a_production_value_pushed_far_beyond_its_range_always_alarms(unit, frame, record_seed, field, spans, up) -> None:
    history = frame[list(FEATURES)].to_numpy()
    low, high = history[:, field].min(), history[:, field].max()
    width = high - low
    settings_, facility, item = _records(20, seed=record_seed)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    production[:, field] = high + spans * width if up else low - spans * width
    result = unit.score(settings_, part_keys(facility, item), production)
    assert ((result.score > 1.0) | (result.excursion > 1.0)).all()


# -- the running baseline ---------------------------------------------------------------------------
def _misfit_run(shots: int, misfit: float, seed: int = 11):
    """``shots`` of one known part at one setting, every field ``misfit`` noise sds off what the
    maker's response says (a mould that runs differently from the maker's other parts)."""
    settings_, facility, item = _records(shots, seed=seed, parts=(("F1", "A"),))
    settings_[:] = settings_[0]
    clean = expected(settings_[:, 0], settings_[:, 1], facility, item)
    noise = np.random.default_rng(seed).normal(size=clean.shape)
    return settings_, part_keys(facility, item), clean + (misfit + noise) * NOISE


def test_a_lasting_misfit_stops_alarming_within_a_few_half_lives_and_a_pushed_shot_in_it_still_alarms(unit, frame) -> None:
    settings_, keys, production = _misfit_run(120, misfit=10.0)
    start = {keys[0]: np.zeros(len(FEATURES))}  # the part's baseline had settled at "no misfit"
    before = unit.score(settings_, keys, production, state=start)
    z = unit.z(settings_, keys, production)
    assert (np.abs(z[:, 0]) > 3).all()  # every shot is far off the response
    # followed at a * clip spreads a shot until within the clip, then halved every half-life
    a = smoothing(unit.baseline_halflife)
    settle = int(np.ceil((np.abs(z).max() - unit.baseline_clip) / (a * unit.baseline_clip) + 3 * unit.baseline_halflife))
    assert settle < 40
    assert before.score[0] > 1.0  # the change itself is news
    assert (before.score[settle:] > 1.0).mean() <= 0.02  # then as often as on any normal run
    assert (before.excursion <= 1.0).all()
    pushed = production.copy()
    pushed[100, 1] += 40 * (frame["pressure"].max() - frame["pressure"].min())
    after = unit.score(settings_, keys, pushed, state=start)
    assert after.score[100] > 1.0 and after.excursion[100] > 1.0
    assert np.array_equal(after.score[:100], before.score[:100])  # causal: nothing before it moved


def test_baselines_carried_between_batches_give_the_same_verdicts_as_one_batch(unit, frame) -> None:
    settings_, facility, item = _records(300, seed=21)
    keys = part_keys(facility, item)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    production[::13, 0] += 50.0
    whole = unit.score(settings_, keys, production)
    first = unit.score(settings_[:120], keys[:120], production[:120])
    second = unit.score(settings_[120:], keys[120:], production[120:], state=first.baseline_state)
    assert np.allclose(np.r_[first.score, second.score], whole.score)
    assert np.allclose(np.r_[first.excursion, second.excursion], whole.excursion)


def test_without_a_baseline_only_the_residual_tables_judge() -> None:
    history = maker_frame(seed=3)
    off = fit_conditional("M", FEATURES, SETTINGS, history, np.zeros(len(history)), ConditionalConfig(baseline_halflife=0)).unit
    assert off.baseline_halflife == 0 and off.baseline_state == {} and off.neighbour_tables == {}
    settings_, facility, item = _records(50, seed=4)
    keys = part_keys(facility, item)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    z, d, end = off.judged_residuals(settings_, keys, production)
    assert d is None and end == {}
    assert np.array_equal(off.score(settings_, keys, production).fields[keys == keys[0]],
                          off.field_evidence(keys[0], z[keys == keys[0]], None))


def _lasting_run(frame, shots: int, widths: float, new_speed: bool = False):
    """``shots`` of part F1/A at its first historical setting (``new_speed``: at a speed beyond
    anything it ran), cushion held ``widths`` of the part's cushion range below its lowest:
    (settings, keys, production)."""
    part = frame[(frame["facility"] == "F1") & (frame["item"] == "A")]
    settings_ = np.repeat(part[list(SETTINGS)].to_numpy()[:1], shots, axis=0)
    if new_speed:
        low, high = part["speed"].min(), part["speed"].max()
        settings_[:, 0] = high + (high - low)
    facility, item = np.full(shots, "F1", dtype=object), np.full(shots, "A", dtype=object)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    cushion = part["cushion"].to_numpy()
    production[:, 2] = cushion.min() - widths * (cushion.max() - cushion.min())
    return settings_, part_keys(facility, item), production


def test_a_lasting_gross_excursion_at_a_setting_its_part_ran_keeps_alarming(unit, frame) -> None:
    # Within the part's own setting range the raw and residual bands are trusted alone: the
    # running baseline follows the value, yet every shot of it stays an excursion.
    assert unit.lasting_ratio == ConditionalConfig().lasting_excursion_ratio == 3.0
    # 4.5 widths below: past 3 tolerances (a width each), for 2000 shots
    settings_, keys, production = _lasting_run(frame, 2000, 4.5)
    assert unit.within_history(keys[0], settings_).all()
    result = unit.score(settings_, keys, production)
    assert (result.excursion > 3.0).all()
    # (judged against its last shots, the same run would stop alarming: the rule above is what holds it)
    z, d, _ = unit.judged_residuals(settings_, keys, production)
    assert np.abs(d[-1, 2]) < np.abs(z[-1, 2]) / 10


def test_a_lasting_small_excursion_at_a_setting_its_part_ran_stops_alarming_once_the_shots_follow_it(unit, frame) -> None:
    # 1.5 widths below the part's band: past one tolerance, short of lasting_ratio (3): news while
    # it is new, the part's new normal once the baseline has followed it
    settings_, keys, production = _lasting_run(frame, 600, 1.5)
    result = unit.score(settings_, keys, production)
    assert result.excursion[0] > 1.0
    assert len(result.excursion[300:]) == 300 and (result.excursion[300:] <= 1.0).all()


def test_the_lasting_ratio_boundary_equal_to_the_line_alarms_alone_and_just_above_it_needs_the_neighbours(unit, frame) -> None:
    settings_, keys, production = _lasting_run(frame, 1000, 2.5)
    always = replace(unit, lasting_ratio=1.0)  # the raw and residual bands alone (the ratio reported)
    z, d, _ = unit.judged_residuals(settings_, keys, production)
    alone = always.excursions(keys, production, z, d, settings_)
    line = float(alone[-1])
    assert line > 1.0
    at_line = replace(unit, lasting_ratio=line).excursions(keys, production, z, d, settings_)
    assert at_line[-1] == line  # equal to the line: the bands decide alone
    above = replace(unit, lasting_ratio=float(np.nextafter(line, np.inf))).excursions(keys, production, z, d, settings_)
    assert above[-1] < line and above[-1] <= 1.0  # one ulp short: the baseline has followed, no alarm


def test_outside_its_setting_range_a_part_is_judged_against_its_last_shots(unit, frame) -> None:
    # a set point the part never ran: what the shots there have in common is not an excursion
    part = frame[(frame["facility"] == "F1") & (frame["item"] == "A")]
    low, high = part["speed"].min(), part["speed"].max()
    settings_, keys, production = _misfit_run(200, misfit=10.0)
    settings_[:, 0] = high + (high - low)  # beyond anything the part ran
    production = expected(settings_[:, 0], settings_[:, 1], np.full(200, "F1", dtype=object), np.full(200, "A", dtype=object))
    production[:, 2] += 1.0  # and the response misses it (~30 noise sds), on every shot
    assert not unit.within_history(keys[0], settings_).any()
    result = unit.score(settings_, keys, production)
    assert result.excursion[0] > 1.0  # the first shot there is news
    assert (result.excursion[100:] <= 1.0).all()  # the hundredth is not


def test_within_history_is_inclusive_at_both_ends_and_false_without_history(unit, frame) -> None:
    part = frame[(frame["facility"] == "F1") & (frame["item"] == "A")]
    key = part_keys(np.array(["F1"], dtype=object), np.array(["A"], dtype=object))[0]
    low, high = part[list(SETTINGS)].min().to_numpy(), part[list(SETTINGS)].max().to_numpy()
    assert np.array_equal(unit.setting_ranges[key], np.stack([low, high]))
    rows = np.array([low, high, low - [1e-9, 0], high + [0, 1e-9], [np.nan, low[1]]])
    assert unit.within_history(key, rows).tolist() == [True, True, False, False, False]
    assert unit.within_history("nowhere", rows).tolist() == [False] * 5


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from([1e300, -1e300, np.inf, -np.inf, 1e12, -1e12]), field=st.integers(0, len(FEATURES) - 1),
       setting=st.sampled_from([None, 1e300, -np.inf, np.nan, 0.0]), record_seed=st.integers(0, 1000))
def test_an_absurd_production_value_alarms_with_finite_numbers_whatever_the_settings(unit, value, field, setting, record_seed) -> None:
    settings_, facility, item = _records(6, seed=record_seed)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    if setting is not None:
        settings_[:, 0] = setting
    production[:, field] = value
    with np.errstate(over="raise", invalid="raise"):  # no overflow, no 0 * inf on the way (underflow to 0 is fine)
        result = unit.score(settings_, part_keys(facility, item), production)
    for name in ("evidence", "score", "excursion"):
        assert np.isfinite(getattr(result, name)).all(), name
    assert ((result.score > 1.0) | (result.excursion > 1.0)).all()
    assert all(np.isfinite(v).all() for v in result.baseline_state.values())


# -- set points far beyond the maker's span --------------------------------------------------------
def test_setting_excursion_boundaries_hand_computed(unit) -> None:
    from dataclasses import replace

    from model_store.serving.conditional import SETTING_EXCURSION_TOLERANCES

    assert SETTING_EXCURSION_TOLERANCES == 3.0
    # The maker's span of s1 is 100..140 (width 40 < half of 140 = 70: tolerance 70), of s2 10..50
    # (width 40 > half of 50 = 25: tolerance 40).
    wide = replace(unit, setting_span=np.array([[100.0, 10.0], [140.0, 50.0]]))
    x = np.array([
        [140.0, 50.0],        # on the span's edges: 0
        [140.0 + 210.0, 30],  # s1 exactly 3 tolerances beyond: 1.0, not yet an alarm (> 1 alarms)
        [100.0 - 211.0, 30],  # 211 / 210
        [120.0, 50 + 120.0],  # s2 exactly 3 x 40 beyond: 1.0
        [120.0, 10 - 240.0],  # s2 240 below: 240 / 120 = 2.0
        [np.nan, 1e308],      # missing s1: 0; absurd s2: capped, finite
    ])
    ratio = wide.setting_excursions(x)
    assert ratio[:, 0].tolist() == pytest.approx([0.0, 1.0, 211 / 210, 0.0, 0.0, 0.0])
    assert ratio[:, 1].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0, 1e9])


def test_a_set_point_never_moved_from_zero_has_a_tolerance_of_one_unit(unit) -> None:
    from dataclasses import replace

    still = replace(unit, setting_span=np.zeros((2, 2)))
    assert still.setting_excursions(np.array([[3.0, -6.0]])).tolist() == [[pytest.approx(1.0), pytest.approx(2.0)]]
    never = replace(unit, setting_span=np.full((2, 2), np.nan))
    assert never.setting_excursions(np.array([[1e300, -1e300]])).tolist() == [[0.0, 0.0]]  # never set: no span
    # A store from before the span was recorded: the union of its parts' setting ranges stands in.
    older = replace(unit, setting_span=None,
                    setting_ranges={"P1": np.array([[100.0, 10.0], [120.0, 50.0]]), "P2": np.array([[110.0, 20.0], [140.0, 30.0]])})
    assert older.setting_excursions(np.array([[140.0 + 420.0, 50.0]])).tolist() == [[pytest.approx(2.0), 0.0]]
    assert replace(unit, setting_span=None, setting_ranges={}).setting_excursions(np.array([[1e300, 0.0]])).tolist() == [[0.0, 0.0]]


def test_the_span_covers_every_row_of_the_maker_history(unit, frame) -> None:
    """Every history row lies within the span: the rule never alarms on what the maker ran."""
    settings_ = frame[list(unit.settings)].to_numpy(float)
    assert (unit.setting_excursions(settings_) == 0.0).all()
    assert np.allclose(unit.setting_span, [np.nanmin(settings_, axis=0), np.nanmax(settings_, axis=0)])


def test_a_gross_set_point_excursion_alarms_and_names_the_set_point(unit, frame) -> None:
    settings_, facility, item = _records(4, seed=3)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    low, high = unit._maker_span
    tolerance = max(high[1] - low[1], 0.5 * max(abs(low[1]), abs(high[1])))
    settings_[1, 1] = high[1] + 3.0 * tolerance * 1.5  # 1.5: a gross excursion
    result = unit.score(settings_, part_keys(facility, item), production)
    assert result.settings_outside[:, 1].tolist() == [False, True, False, False]
    assert result.excursion[1] >= 1.5 - 1e-9  # the worst of the set points' and the production values'


# -- a lasting excursion scores just above the line ----------------------------------------------------
def test_a_lasting_gross_excursion_alarms_just_above_the_line_once_its_shots_are_alike(unit, frame) -> None:
    assert unit.lasting_at_line is ConditionalConfig().lasting_at_line is True
    settings_, keys, production = _lasting_run(frame, 2000, 4.5)
    result = unit.score(settings_, keys, production)
    verdict = np.fmax(result.score, result.excursion_score)
    assert (verdict > 1.0).all()  # every shot still alarms
    assert result.excursion_score[0] == result.excursion[0] > 3.0  # the first shot stands out from its neighbours too
    later = slice(-100, None)  # the baseline has followed (see the test above): only the lasting rule holds these
    assert np.allclose(result.excursion_score[later], lasting_rank(result.excursion[later]))
    assert (result.excursion_score[later] < 1.03).all() and (result.excursion[later] > 3.0).all()
    # off (a store from before it): the whole ratio is the score
    before = replace(unit, lasting_at_line=False).score(settings_, keys, production)
    assert np.array_equal(before.excursion_score, before.excursion)
    assert np.array_equal(before.excursion, result.excursion)


def test_an_isolated_gross_excursion_keeps_its_whole_ratio_as_the_score(unit, frame) -> None:
    settings_, keys, production = _misfit_run(120, misfit=0.0)
    pushed = production.copy()
    pushed[100, 1] += 40 * (frame["pressure"].max() - frame["pressure"].min())
    result = unit.score(settings_, keys, pushed)
    assert result.excursion[100] > 3.0 and result.excursion_score[100] == result.excursion[100]


# -- a part the response never saw -------------------------------------------------------------------
def _new_part_run(shots: int, offset_sds: float, seed: int = 5):
    """``shots`` of part F3/C (in no history row) at one known setting, pressure ``offset_sds``
    noise sds off what the maker's response expects of it (a new mould)."""
    settings_ = np.tile([80.0, 215.0], (shots, 1))
    facility, item = np.full(shots, "F3", dtype=object), np.full(shots, "C", dtype=object)
    production = expected(settings_[:, 0], settings_[:, 1], facility, item)
    production += np.random.default_rng(seed).normal(size=production.shape) * NOISE
    production[:, 1] += offset_sds * NOISE[1]
    return settings_, part_keys(facility, item), production


def test_new_parts_are_the_parts_without_a_history_row(unit) -> None:
    keys = np.array([_key("F1", "A"), _key("F3", "C"), _key("F2", "B"), _key("F1", "C")], dtype=object)
    assert unit.new_parts(keys).tolist() == [False, True, False, True]
    assert unit.followed(keys, np.tile([80.0, 215.0], (4, 1))).tolist() == [False, True, False, True]
    neither = replace(unit, follow_new_parts=False, follow_new_settings=False)
    assert neither.followed(keys, np.tile([80.0, 215.0], (4, 1))) is None


@pytest.mark.parametrize("offset_sds", [300.0, 3000.0])
def test_a_new_part_far_from_the_makers_response_alarms_on_its_first_shot_only(unit, offset_sds: float) -> None:
    settings_, keys, production = _new_part_run(300, offset_sds)
    result = unit.score(settings_, keys, production)
    verdict = np.fmax(result.score, result.excursion_score)
    assert verdict[0] > 1.0  # the new mould's first shot is news
    assert (verdict[1:] > 1.0).mean() <= 0.02  # then judged against its own shots
    # without the rule the baseline walks half a spread a shot from where it started (at most
    # START_LIMIT spreads out), and the run alarms for well over a hundred shots
    walked = replace(unit, follow_new_parts=False, baseline_shift_run=0).score(settings_, keys, production)
    assert (np.fmax(walked.score, walked.excursion)[1:] > 1.0).sum() > 100
    # the level-shift rule alone follows it after its first baseline_shift_run shots
    assert unit.baseline_shift_run == ConditionalConfig().baseline_shift_run == 5
    shifted = replace(unit, follow_new_parts=False).score(settings_, keys, production)
    alarms = np.fmax(shifted.score, shifted.excursion_score) > 1.0
    assert alarms[:2].all() and alarms[unit.baseline_shift_run + 1:].mean() <= 0.02
    # a shot pushed far within the new part's run still alarms
    pushed = production.copy()
    pushed[200, 2] += 40 * NOISE[2] * 100
    after = unit.score(settings_, keys, pushed)
    assert np.fmax(after.score, after.excursion_score)[200] > 1.0


def test_a_new_parts_reach_is_how_far_the_known_parts_would_sit_were_they_new(unit, frame) -> None:
    """Row by kind of news (new pairing, new machine, new item, both): per field the largest
    residual a known part shows when scored under a name of that kind (its median over its
    history), as the response's coefficients give it."""
    settings_, production = frame[list(SETTINGS)].to_numpy(float), frame[list(FEATURES)].to_numpy(float)
    reach = unit._new_part_reach
    assert reach.shape == (4, len(FEATURES)) and (reach > 0).all()
    for row, (machine, item) in enumerate([(None, None), ("F9", None), (None, "Z"), ("F9", "Z")]):
        if row == 0:
            continue  # the fixture's parts have no offset of their own beyond machine + item
        seen = np.zeros(len(FEATURES))
        for (f, i), rows in frame.groupby(["facility", "item"]).indices.items():
            keys = part_keys(np.full(len(rows), machine or f, dtype=object), np.full(len(rows), item or i, dtype=object))
            seen = np.maximum(seen, np.abs(np.median(unit.z(settings_[rows], keys, production[rows]), axis=0)))
        assert reach[row] == pytest.approx(seen, rel=0.1, abs=0.3), row
    keys = np.array([_key("F1", "A"), _key("F1", "C"), _key("F3", "A"), _key("F2", "C"), _key("F3", "D")], dtype=object)
    got = unit.first_shot_reach(keys)
    assert got[0].tolist() == [0.0, 0.0, 0.0]  # a known part is judged by its own shots
    assert np.array_equal(got[1], reach[2]) and np.array_equal(got[2], reach[1])
    assert np.array_equal(got[3], reach[2]) and np.array_equal(got[4], reach[3])


@pytest.mark.parametrize(("facility", "item"), [("F3", "C"), ("F3", "A"), ("F1", "C")])
def test_the_first_shot_of_a_new_part_alarms_only_beyond_where_the_known_parts_sit(unit, facility: str, item: str) -> None:
    def first_verdict(offset_sds: float, judged: ConditionalUnit = unit) -> float:
        settings_ = np.tile([80.0, 215.0], (3, 1))
        f, i = np.full(3, facility, dtype=object), np.full(3, item, dtype=object)
        production = expected(settings_[:, 0], settings_[:, 1], f, i) + np.random.default_rng(5).normal(size=(3, 3)) * NOISE
        production[:, 1] += offset_sds * NOISE[1]
        result = judged.score(settings_, part_keys(f, i), production)
        return float(np.fmax(result.score, result.excursion_score)[0])

    assert first_verdict(0.0) < 0.5  # as the machine and item suggest: a new mould, not a defect
    assert first_verdict(50.0) > 1.0  # 50 noise sds beyond that: news
    # the rule belongs to follow_new_parts: a store from before it judged the first shot on z alone
    legacy = replace(unit, follow_new_parts=False, baseline_shift_run=0)
    assert first_verdict(0.0, legacy) > first_verdict(0.0)
    if item == "C":  # the furthest new part: the rule is what keeps its first shot quiet
        assert first_verdict(0.0, legacy) > 1.0


# -- absurd values alarm at any setting, however long they last ---------------------------------------
def test_the_absurd_ratio_boundary_equal_to_the_line_alarms_alone_and_just_above_it_needs_the_neighbours(unit, frame) -> None:
    from model_store.serving.conditional import ABSURD_EXCURSION_RATIO

    assert unit.absurd_ratio == ABSURD_EXCURSION_RATIO == 100.0
    settings_, keys, production = _lasting_run(frame, 400, 50.0, new_speed=True)
    assert not unit.within_history(keys[0], settings_).any()  # the lasting rule cannot hold it here
    z, d, _ = unit.judged_residuals(settings_, keys, production)
    line = float(replace(unit, absurd_ratio=1.0).excursions(keys, production, z, d, settings_)[-1])
    assert 1.0 < line < unit.absurd_ratio  # 50 widths: a new setting could make that; the neighbours judge it
    assert unit.excursions(keys, production, z, d, settings_)[-1] <= 1.0
    at_line = replace(unit, absurd_ratio=line).excursions(keys, production, z, d, settings_)
    assert at_line[-1] == line  # equal to the line: the bands decide alone, at the whole ratio
    above = replace(unit, absurd_ratio=float(np.nextafter(line, np.inf))).excursions(keys, production, z, d, settings_)
    assert above[-1] <= 1.0  # one ulp short: the baseline has followed, no alarm


def test_a_value_hundreds_of_widths_out_at_a_new_setting_keeps_alarming_at_its_whole_ratio(unit, frame) -> None:
    settings_, keys, production = _lasting_run(frame, 400, 500.0, new_speed=True)
    result = unit.score(settings_, keys, production)
    assert (result.excursion >= unit.absurd_ratio).all()
    assert np.array_equal(result.excursion_score, result.excursion)  # not ranked as a lasting one


def test_an_infinite_value_of_a_new_part_alarms_on_every_shot(unit) -> None:
    settings_, keys, production = _new_part_run(50, 300.0)
    production[:, 0] = np.inf
    result = unit.score(settings_, keys, production)
    assert (np.fmax(result.score, result.excursion_score) > 1.0).all()
