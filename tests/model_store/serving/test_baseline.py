"""Running residual baselines (model_store/serving/baseline.py): hand-computed means, causality,
the clipped step that bounds one wild shot, a new part's start, gaps, and the state that makes
two batches the same as one."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model_store.serving.baseline import START_LIMIT, running_baseline, smoothing


def _one_part(z: list[list[float]], halflife: float = 1.0, clip: float = 4.0, prior: list[float] | None = None):
    x = np.array(z, dtype=float)
    keys = np.array(["p"] * len(x), dtype=object)
    state = {} if prior is None else {"p": np.array(prior, dtype=float)}
    return running_baseline(x, keys, np.arange(len(x)), halflife, clip, state)


def test_smoothing_halves_the_weight_every_halflife() -> None:
    assert smoothing(1.0) == 0.5
    a = smoothing(5.0)
    assert (1 - a) ** 5 == pytest.approx(0.5)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="half-life"):
            smoothing(bad)


def test_hand_computed_means_before_each_shot() -> None:
    # a = 0.5. A new part's first shot has no baseline and its mean starts there; each later
    # shot moves the mean half-way towards itself (steps clipped at 4)
    baseline, end = _one_part([[2.0], [4.0], [0.0]])
    assert baseline[:, 0].tolist() == [0.0, 2.0, 3.0]
    assert end["p"].tolist() == [1.5]


def test_a_prior_state_is_where_the_mean_starts() -> None:
    baseline, end = _one_part([[2.0]], prior=[3.0])
    assert baseline[0, 0] == 3.0 and end["p"][0] == 2.5


def test_steps_are_clipped_so_one_wild_shot_moves_the_mean_by_at_most_clip_times_a() -> None:
    for wild in (1e300, float("inf"), 5.0):
        baseline, end = _one_part([[wild], [0.0]], clip=4.0, prior=[0.0])
        assert baseline[0, 0] == 0.0  # a shot never sees itself
        assert baseline[1, 0] == 2.0 and end["p"][0] == 1.0  # 0.5 * min(wild - 0, 4), then half-way back
    baseline, _ = _one_part([[-1e300], [0.0]], clip=4.0, prior=[0.0])
    assert baseline[1, 0] == -2.0


def test_the_clip_boundary_is_kept_not_cut() -> None:
    baseline, _ = _one_part([[4.0], [0.0]], clip=4.0, prior=[0.0])
    assert baseline[1, 0] == 2.0  # a step equal to the clip: taken whole
    baseline, _ = _one_part([[3.999], [0.0]], clip=4.0, prior=[0.0])
    assert baseline[1, 0] == pytest.approx(1.9995)


def test_a_new_parts_mean_starts_at_its_first_shot_held_within_the_start_limit() -> None:
    baseline, _ = _one_part([[40.0], [40.0]])
    assert baseline[:, 0].tolist() == [0.0, 40.0]
    for wild, start in ((1e300, START_LIMIT), (-float("inf"), -START_LIMIT), (START_LIMIT, START_LIMIT)):
        baseline, _ = _one_part([[wild], [0.0]])
        assert baseline[1, 0] == start


def test_a_new_parts_first_shot_is_judged_against_the_nearest_point_of_its_reach() -> None:
    # reach 30 on field 0, 0 on field 1, 5 on field 2: the first shot's baseline is the shot held
    # within -reach..reach (d = how far beyond the reach); later shots as before
    x = np.array([[45.0, 7.0, -5.0], [45.0, 7.0, -5.0]])
    keys = np.array(["p", "p"], dtype=object)
    reach = np.array([[30.0, 0.0, 5.0], [30.0, 0.0, 5.0]])
    baseline, end = running_baseline(x, keys, np.arange(2), 1.0, 4.0, {}, first_reach=reach)
    assert baseline[0].tolist() == [30.0, 0.0, -5.0]  # beyond by 15; no reach; equal to it: d = 0
    assert baseline[1].tolist() == [45.0, 7.0, -5.0]  # the mean started at the first shot, as without a reach
    assert end["p"].tolist() == [45.0, 7.0, -5.0]
    # a part with a state ignores its reach; a NaN shot is judged against 0
    baseline, _ = running_baseline(x[:1], keys[:1], np.arange(1), 1.0, 4.0, {"p": np.array([1.0, 2.0, 3.0])},
                                   first_reach=reach[:1])
    assert baseline[0].tolist() == [1.0, 2.0, 3.0]
    baseline, _ = running_baseline(np.array([[np.nan, 1.0, 9.0]]), keys[:1], np.arange(1), 1.0, 4.0, {},
                                   first_reach=reach[:1])
    assert baseline[0].tolist() == [0.0, 0.0, 5.0]


def test_a_missing_residual_leaves_the_mean_where_it_was() -> None:
    baseline, end = _one_part([[2.0, 2.0], [np.nan, 4.0], [0.0, 0.0]])
    assert baseline[2].tolist() == [2.0, 3.0]  # field 0 held at 2.0 through the gap
    assert end["p"].tolist() == [1.0, 1.5]


def test_parts_keep_separate_means_and_rows_are_taken_in_time_order() -> None:
    z = np.array([[4.0], [2.0], [1.0], [2.0]])
    keys = np.array(["a", "b", "a", "b"], dtype=object)
    order = np.array([2, 3, 0, 1])  # rows 2 and 3 came first
    baseline, end = running_baseline(z, keys, order, 1.0, 10.0, {})
    assert baseline[:, 0].tolist() == [1.0, 2.0, 0.0, 0.0]
    assert end["a"][0] == 2.5 and end["b"][0] == 2.0


def test_a_lasting_offset_within_the_clip_is_absorbed_at_the_geometric_rate() -> None:
    halflife, offset = 5.0, 3.0
    baseline, _ = _one_part([[offset]] * 50, halflife=halflife, prior=[0.0])
    a = smoothing(halflife)
    expected = offset * (1 - (1 - a) ** np.arange(50))
    assert np.allclose(baseline[:, 0], expected)
    assert abs(offset - baseline[10, 0]) <= offset * 0.25 + 1e-12  # two half-lives: a quarter left


def test_a_lasting_offset_beyond_the_clip_is_followed_at_a_times_clip_per_shot_then_absorbed() -> None:
    halflife, clip, offset = 5.0, 4.0, 40.0
    a = smoothing(halflife)
    baseline, _ = _one_part([[offset]] * 200, halflife=halflife, clip=clip, prior=[0.0])
    linear = int(np.floor((offset - clip) / (a * clip)))
    assert np.allclose(baseline[: linear + 1, 0], a * clip * np.arange(linear + 1))
    assert offset - baseline[-1, 0] < 1e-3


def test_no_rows_give_no_baselines() -> None:
    baseline, end = running_baseline(np.zeros((0, 3)), np.array([], dtype=object), np.array([], dtype=int), 5.0, 4.0, {})
    assert baseline.shape == (0, 3) and end == {}


_Z = arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 3)),
            elements=st.floats(allow_nan=True, allow_infinity=True, width=64))


@settings(max_examples=150, deadline=None)
@given(z=_Z, labels=st.lists(st.sampled_from("abc"), min_size=40, max_size=40), cut=st.integers(0, 40),
       halflife=st.floats(0.5, 50.0), seed=st.integers(0, 1000))
def test_two_batches_carry_the_same_baselines_as_one(z, labels, cut, halflife, seed) -> None:
    rows = len(z)
    keys = np.array(labels[:rows], dtype=object)
    order = np.random.default_rng(seed).permutation(rows)  # any time order
    whole, end = running_baseline(z, keys, order, halflife, 4.0, {})
    cut = min(cut, rows)
    first, second = order[:cut], order[cut:]
    b1, state = running_baseline(z[first], keys[first], np.arange(len(first)), halflife, 4.0, {})
    b2, end2 = running_baseline(z[second], keys[second], np.arange(len(second)), halflife, 4.0, state)
    split = np.zeros_like(whole)
    split[first], split[second] = b1, b2
    assert np.allclose(split, whole, rtol=1e-9, atol=1e-9)
    assert set({**state, **end2}) == set(end)
    for key, value in {**state, **end2}.items():
        assert np.allclose(value, end[key], rtol=1e-9, atol=1e-9)
    assert np.isfinite(whole).all()  # whatever came in


def _reference(z: np.ndarray, keys: np.ndarray, order: np.ndarray, halflife: float, clip: float,
               state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The documented rule, one shot at a time in time order (what the function vectorises)."""
    a = smoothing(halflife)
    mean = {k: np.array(v, dtype=float) for k, v in state.items()}
    out = np.zeros(z.shape)
    seen: dict[str, np.ndarray] = {}
    for row in order:
        key = str(keys[row])
        x = z[row]
        if key in mean:
            out[row] = mean[key]
            mean[key] = mean[key] + a * np.nan_to_num(np.clip(x - mean[key], -clip, clip), nan=0.0)
        else:
            mean[key] = np.nan_to_num(np.clip(x, -START_LIMIT, START_LIMIT), nan=0.0)
        seen[key] = mean[key]
    return out, seen


@settings(max_examples=150, deadline=None)
@given(z=_Z, labels=st.lists(st.sampled_from("abcdefg"), min_size=40, max_size=40), halflife=st.floats(0.5, 50.0),
       clip=st.floats(0.1, 10.0), seed=st.integers(0, 1000), prior=st.sets(st.sampled_from("abcdefg")))
def test_the_vectorised_means_are_the_rule_applied_shot_by_shot(z, labels, halflife, clip, seed, prior) -> None:
    rows, fields = z.shape
    keys = np.array(labels[:rows], dtype=object)
    order = np.random.default_rng(seed).permutation(rows)
    state = {k: np.linspace(-1.0, 1.0, fields) * (ord(k) - 100) for k in prior}
    got, end = running_baseline(z, keys, order, halflife, clip, state)
    want, want_end = _reference(z, keys, order, halflife, clip, state)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert set(end) == set(want_end)
    for key in end:
        assert np.allclose(end[key], want_end[key], rtol=1e-12, atol=1e-12)


# -- the level-shift rule ------------------------------------------------------------------------------
def _one_field(values: list[float], shift_run: int, state: dict | None = None, clip: float = 4.0):
    z = np.array(values, dtype=float)[:, None]
    keys = np.array(["P"] * len(values), dtype=object)
    return running_baseline(z, keys, np.arange(len(values)), 5.0, clip, state if state is not None else {"P": np.array([0.0])},
                            shift_run=shift_run)


def test_a_steady_run_beyond_the_clip_moves_the_mean_to_its_last_shot() -> None:
    a = smoothing(5.0)
    base, end = _one_field([10.0, 10.5, 11.0, 11.2], shift_run=3)
    # the first two shots move the mean by a * clip each; the third completes the run: mean = 11
    assert base[:, 0].tolist() == pytest.approx([0.0, 4 * a, 4 * a + 4 * a, 11.0])
    mean, run, last = end["P"]
    assert mean == pytest.approx(11.0 + a * 0.2) and run == 0.0 and last == 11.2
    # one shot short of the run: still walking
    short, _ = _one_field([10.0, 10.5, 11.0], shift_run=4)
    assert short[2, 0] == pytest.approx(8 * a)


def test_a_run_must_be_steady_on_one_side_and_beyond_the_clip() -> None:
    a = smoothing(5.0)
    walking = [0.0, 4 * a, 8 * a]
    # each shot more than the clip from the one before: a string of wild shots, never a shift
    assert _one_field([10.0, 20.0, 30.0, 0.0], 3)[0][3, 0] == pytest.approx(12 * a)
    # alternating sides
    assert _one_field([10.0, -10.0, 10.0, 0.0], 3)[0][:, 0].tolist()[:3] == pytest.approx(walking[:1] + [4 * a, 0.0])
    # exactly the clip from the mean is not beyond it (the first shot lies at 4: no run starts)
    assert _one_field([4.0, 6.0, 6.0], 3)[1]["P"][1] == 2.0  # counted, it would have completed the run
    # exactly the clip from the shot before is steady (10 -> 14 -> 18 is a run)
    assert _one_field([10.0, 14.0, 18.0, 0.0], 3)[0][3, 0] == 18.0


def test_a_missing_value_leaves_the_run_and_the_last_shot_as_they_were() -> None:
    base, end = _one_field([10.0, 10.0, np.nan, 10.0, 0.0], shift_run=3)
    assert base[4, 0] == 10.0
    assert end["P"][2] == 0.0  # the last shot


def test_the_state_carries_the_run_between_batches_and_a_mean_only_state_reads() -> None:
    values = [10.0, 10.2, 10.4, 10.1, 30.0, 30.5, 30.2, 29.9, 0.0]
    whole, end = _one_field(values, 3)
    for cut in range(1, len(values)):
        first, carried = _one_field(values[:cut], 3)
        second, again = _one_field(values[cut:], 3, state=carried)
        assert np.allclose(np.r_[first[:, 0], second[:, 0]], whole[:, 0]) and np.allclose(again["P"], end["P"], equal_nan=True)
    # a store from before the rule ships the mean alone: the run starts empty
    legacy, _ = _one_field([10.0, 10.0, 10.0, 0.0], 3, state={"P": np.array([0.0])})
    assert legacy[3, 0] == 10.0
    _off, off_end = _one_field(values, 0)
    assert off_end["P"].shape == (1,)  # off: the state is the mean, as before


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-60, 60), min_size=2, max_size=40), st.integers(2, 6), st.integers(1, 39))
def test_batches_and_one_pass_agree_with_the_level_shift_rule(values: list[float], shift_run: int, cut: int) -> None:
    cut = min(cut, len(values) - 1)
    whole, end = _one_field(values, shift_run)
    first, carried = _one_field(values[:cut], shift_run)
    second, again = _one_field(values[cut:], shift_run, state=carried)
    assert np.allclose(np.r_[first[:, 0], second[:, 0]], whole[:, 0])
    assert np.allclose(again["P"], end["P"], equal_nan=True)


def test_the_run_counts_each_side_exactly_and_restarts_on_a_switch_or_a_jump_between_shots() -> None:
    # (the run and last shot are the state's second and third thirds)
    assert _one_field([10.0, 10.0], 5)[1]["P"][1] == 2.0
    assert _one_field([-10.0, -10.0], 5)[1]["P"][1] == -2.0
    assert _one_field([10.0, 10.0, -10.0], 5)[1]["P"][1] == -1.0  # the other side starts a run of its own
    assert _one_field([-10.0, -10.0, 10.0], 5)[1]["P"][1] == 1.0
    assert _one_field([10.0, 20.0], 5)[1]["P"][1] == 1.0  # not steady: a new run of one
    assert _one_field([-10.0, -20.0], 5)[1]["P"][1] == -1.0
    assert _one_field([10.0, 1.0], 5)[1]["P"][1] == 0.0  # back within the clip


def test_exactly_the_clip_below_the_mean_is_not_beyond_it_either() -> None:
    assert _one_field([-4.0, -6.0, -6.0], 3)[1]["P"][1] == -2.0  # counted, -4 would have completed the run


def test_a_run_of_one_follows_every_shot_beyond_the_clip() -> None:
    base, end = _one_field([10.0, 0.0], 1)
    assert base[1, 0] == 10.0 and end["P"].shape == (3,)


def test_a_new_parts_first_shot_starts_its_mean_and_no_run() -> None:
    # no state: the first shot (100) starts the mean at START_LIMIT (50); the second, 50 from the
    # mean and steady, is the run's first shot, so a run of 2 has not yet moved the mean
    a = smoothing(5.0)
    base, end = _one_field([100.0, 100.0, 0.0], 2, state={})
    assert base[1, 0] == START_LIMIT and base[2, 0] == pytest.approx(START_LIMIT + a * 4.0)
    assert end["P"][1] == -1.0  # the last shot, 0, lies beyond the clip below the mean


def test_infinite_and_huge_readings_raise_no_warning_and_never_make_a_run() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base, end = _one_field([np.inf, np.inf, np.inf, 1e308, -1e308, np.nan, 0.0], 3)
    assert np.isfinite(base).all() and end["P"][1] == 0.0


# -- the running baseline follows a judged shot all the way where asked ---------------------------
def test_follow_moves_the_mean_to_the_judged_shot_and_the_next_shot_is_judged_against_it() -> None:
    z = np.array([[0.0, 0.0], [10.0, np.nan], [10.0, 3.0], [10.0, 3.0]])
    keys = np.array(["P"] * 4, dtype=object)
    state = {"P": np.array([0.0, 1.0])}
    a = smoothing(5.0)
    plain, _ = running_baseline(z, keys, np.arange(4), 5.0, 4.0, state)
    followed, end = running_baseline(z, keys, np.arange(4), 5.0, 4.0, state, np.array([False, True, False, False]))
    # row 0 is judged against the state and pulls field 1 towards 0 by a * 1
    assert followed[0].tolist() == [0.0, 1.0]
    assert followed[1].tolist() == pytest.approx([0.0, 1.0 - a])
    # row 1 is followed: field 0 jumps to 10; field 1 has no value there and stays
    assert followed[2].tolist() == pytest.approx([10.0, 1.0 - a])
    # without follow the mean moves by a * clip (4) at most
    assert plain[2, 0] == pytest.approx(a * 4.0)
    # row 2 (not followed) moves the mean the usual clipped step: field 1 by a * (3 - (1 - a))
    assert followed[3].tolist() == pytest.approx([10.0, (1.0 - a) + a * (3.0 - (1.0 - a))])
    assert end["P"].tolist() == pytest.approx([10.0, followed[3, 1] + a * (3.0 - followed[3, 1])])


def test_follow_on_a_first_shot_without_state_starts_the_mean_unclipped() -> None:
    z = np.array([[500.0], [500.0]])
    keys = np.array(["new", "new"], dtype=object)
    plain, _ = running_baseline(z, keys, np.arange(2), 5.0, 4.0, {})
    followed, _ = running_baseline(z, keys, np.arange(2), 5.0, 4.0, {}, np.array([True, False]))
    assert plain[1, 0] == 50.0  # START_LIMIT holds a new part's first mean
    assert followed[1, 0] == 500.0  # followed: the shot itself


def test_a_followed_shot_exactly_the_clip_from_the_mean_takes_the_usual_step() -> None:
    a = smoothing(5.0)
    z = np.array([[14.0], [0.0]])
    keys = np.array(["P", "P"], dtype=object)
    base, _ = running_baseline(z, keys, np.arange(2), 5.0, 4.0, {"P": np.array([10.0])}, np.array([True, False]))
    assert base[1, 0] == pytest.approx(10.0 + a * 4.0)  # 4 from the mean: not further than the clip
    base, _ = running_baseline(z, keys, np.arange(2), 5.0, 4.0, {"P": np.array([-10.0])}, np.array([True, False]))
    assert base[1, 0] == 14.0  # 24 from a mean of -10 (|shot + mean| would be 4)


def test_a_carried_state_of_two_fields_reads_its_run_and_last_shot() -> None:
    z = np.array([[10.0, 0.0], [0.0, 0.0]])
    keys = np.array(["P", "P"], dtype=object)
    state = {"P": np.array([0.0, 0.0, 2.0, 0.0, 10.0, 0.0])}  # mean (0, 0), run (2, 0), last (10, 0)
    base, end = running_baseline(z, keys, np.arange(2), 5.0, 4.0, state, shift_run=3)
    assert base[1].tolist() == [10.0, 0.0]  # the carried run of 2 completed by the first shot
    assert end["P"].shape == (6,)


def test_a_missing_first_value_leaves_a_carried_mean_where_it_was() -> None:
    base, _ = _one_field([np.nan, 0.0], 3, state={"P": np.array([2.0])})
    assert base[1, 0] == 2.0


def test_a_shift_completed_by_the_last_shot_leaves_an_empty_run_in_the_state() -> None:
    _, end = _one_field([10.0, 10.0, 10.0], 3)
    assert end["P"].tolist() == [10.0, 0.0, 10.0]
