"""Drift watch rules (model_store.serving.drift): hand-computed boundaries, then whole input spaces."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.drift import (
    DETECTORS,
    REFERENCE_PROBS,
    Cusum,
    DriftConfig,
    DriftWatch,
    PartReference,
    PartWatch,
    block_history,
    block_llr,
    long_run_inflation,
    reference_for_part,
    references_from_manifest,
    transform,
    transform_many,
    wilson_bounds,
)

QUANTILES = tuple(float(q) for q in range(1, 20))  # 19 reference quantiles: scores 1..19


def reference(rows: int = 10_000, alarms: int = 200, pit_mean: float = 0.5, sd: float = 0.02, dispersion: float = 1.0,
              block: int = 100) -> PartReference:
    """Every history block held 2 alarms: no spread of its own, so the dispersion is the inflation."""
    return PartReference(rows, alarms, QUANTILES, pit_mean, sd, ((2, 100),), dispersion, block)


# -- the transform ----------------------------------------------------------------------------
def test_transform_is_the_mid_rank_of_the_bin() -> None:
    q = (1.0, 2.0, 3.0)  # K = 3: bins of 1/4, centres 1/8, 3/8, 5/8, 7/8
    assert transform(0.5, q) == 1 / 8
    assert transform(1.0, q) == 2 / 8  # on a quantile: between the two bins it separates
    assert transform(1.5, q) == 3 / 8
    assert transform(3.0, q) == 6 / 8
    assert transform(1e300, q) == 7 / 8
    assert transform(2.0, (2.0, 2.0, 2.0)) == 4 / 8  # ties share the mid-rank
    assert transform_many(np.array([0.5, 1.0, 1.5, 3.0, 1e300]), q).tolist() == [1 / 8, 2 / 8, 3 / 8, 6 / 8, 7 / 8]


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50))
def test_transform_is_monotone_within_the_open_unit_interval(scores: list[float]) -> None:
    values = [transform(s, QUANTILES) for s in sorted(scores)]
    assert all(0 < v < 1 for v in values)
    assert values == sorted(values)
    assert transform_many(np.array(sorted(scores)), QUANTILES).tolist() == values


# -- the reference rate's bounds and the likelihood ratio ---------------------------------------
def test_wilson_bounds_by_hand() -> None:
    lower, upper = wilson_bounds(0, 100, 1.645)
    assert lower == 0.0 and upper == pytest.approx(1.645 ** 2 / (100 + 1.645 ** 2))  # z^2 / (n + z^2) at p = 0
    lower, upper = wilson_bounds(10, 100, 1.645)
    assert lower == pytest.approx(0.0607160, abs=1e-6) and upper == pytest.approx(0.1603618, abs=1e-6)
    assert wilson_bounds(0, 0, 1.645) == (0.0, 1.0)


def test_block_llr_by_hand() -> None:
    # 10 alarms in 200 shots, 4 % against 2 %: 10 ln 2 + 190 ln(0.96 / 0.98)
    assert block_llr(10, 200, 0.02, 0.04) == pytest.approx(10 * math.log(2) + 190 * math.log(0.96 / 0.98))
    assert block_llr(10, 200, 0.02, 0.04) == pytest.approx(3.0138072, abs=1e-6)
    assert block_llr(0, 200, 0.02, 0.005) == pytest.approx(200 * math.log(0.995 / 0.98))


# -- the CUSUM and its hysteresis --------------------------------------------------------------
def test_cusum_comes_on_at_the_line_goes_off_below_half_and_is_capped() -> None:
    c = Cusum(h=2.0)
    assert c.update(1.999) is False and not c.on
    assert c.update(0.001) is True and c.on  # exactly h: on
    assert c.update(-1.0) is False and c.on and c.statistic == pytest.approx(1.0)  # exactly h / 2: still on
    assert c.update(-0.001) is False and not c.on  # below h / 2: off
    c.update(100.0)
    assert c.statistic == 4.0 and c.level == 2.0  # capped at 2h
    c.update(-100.0)
    assert c.statistic == 0.0 and not c.on  # never below 0


def test_a_flag_that_is_on_does_not_fire_again() -> None:
    c = Cusum(h=1.0)
    assert c.update(5.0) is True
    assert c.update(5.0) is False and c.on


# -- a part's watch ----------------------------------------------------------------------------
def test_noisy_adds_the_capped_block_likelihood_ratio_over_the_dispersion() -> None:
    config = DriftConfig(rate_h=1000.0)  # never fires: the statistic is read
    for dispersion in (1.0, 2.5):
        watch = PartWatch(reference(dispersion=dispersion), config)
        p0 = wilson_bounds(200, 10_000, config.confidence_z)[1]
        p1 = 2 * p0
        cap = math.ceil(1.5 * 100 * p1)
        for _ in range(100):  # one block, every shot an alarm: a burst
            watch.observe(5.0, True)
        assert watch.blocks == 1
        assert watch.detectors["noisy"].statistic == pytest.approx(block_llr(cap, 100, p0, p1) / dispersion)
        # the alarm count below the cap counts in full
        watch.detectors["noisy"].statistic = 0.0
        for i in range(100):
            watch.observe(5.0, i < 3)
        assert watch.detectors["noisy"].statistic == pytest.approx(max(0.0, block_llr(3, 100, p0, p1) / dispersion))


def test_blind_uses_the_lower_bound_and_is_off_without_history_alarms() -> None:
    config = DriftConfig(rate_h=1000.0)
    watch = PartWatch(reference(), config)
    p0 = wilson_bounds(200, 10_000, config.confidence_z)[0]
    for _ in range(100):
        watch.observe(5.0, False)
    assert watch.detectors["blind"].statistic == pytest.approx(block_llr(0, 100, p0, 0.25 * p0))
    quiet = PartWatch(reference(alarms=0), config)
    assert "blind" not in quiet.watches and "noisy" in quiet.watches
    for _ in range(1000):
        quiet.observe(5.0, False)
    assert quiet.detectors["blind"].statistic == 0.0


def test_shift_fires_exactly_at_the_line() -> None:
    pit = sum([39 / 40] * 100) / 100  # a block of scores above every reference quantile (summed as the watch does)
    ref = reference(pit_mean=0.4, sd=0.05)
    y = (pit - 0.4) / 0.05
    at_line = PartWatch(ref, DriftConfig(shift_h=y - 0.5))
    fired: list[str] = []
    for _ in range(100):
        fired += at_line.observe(100.0, False)
    assert fired == ["shift_up"] and at_line.drifted() == ("shift_up",)
    above = PartWatch(ref, DriftConfig(shift_h=y - 0.5 + 1e-9))
    assert [e for _ in range(100) for e in above.observe(100.0, False)] == []
    # the other side: every score below the quantiles
    low_pit = sum([1 / 40] * 100) / 100
    low = PartWatch(reference(pit_mean=0.6, sd=0.05), DriftConfig(shift_h=-((low_pit - 0.6) / 0.05) - 0.5))
    assert [e for _ in range(100) for e in low.observe(-5.0, False)] == ["shift_down"]


def test_non_finite_scores_are_not_shots() -> None:
    watch = PartWatch(reference(), DriftConfig())
    for value in (float("nan"), float("inf"), float("-inf")):
        assert watch.observe(value, True) == []
    assert watch.shots == 0 and watch.alarms == 0


def test_iid_shots_at_the_reference_do_not_drift_and_a_doubled_rate_does() -> None:
    rng = np.random.default_rng(7)
    scores = np.linspace(0.0, 20.0, 1000)
    history = block_history(rng.choice(scores, 200 * 100), rng.random(200 * 100) < 0.02, 200, 10)
    assert history is not None
    ref = reference_for_part(history)
    calm = PartWatch(ref, DriftConfig())
    events = []
    for s, a in zip(rng.choice(scores, 1_000_000), rng.random(1_000_000) < 0.02):
        events += calm.observe(float(s), bool(a))
    assert events == []  # 5,000 blocks at the reference: Lorden's bound says ~1 false alarm per 4,900 blocks at most
    noisy = PartWatch(ref, DriftConfig())
    first = None
    for n, (s, a) in enumerate(zip(rng.choice(scores, 200_000), rng.random(200_000) < 0.06)):
        if noisy.observe(float(s), bool(a)) and first is None:
            first = n
    assert first is not None and first < 20_000  # 3x the rate: found within 100 blocks
    shifted = PartWatch(ref, DriftConfig())
    fired = []
    for s, a in zip(rng.choice(scores, 40_000) + 2.0, rng.random(40_000) < 0.02):
        fired += shifted.observe(float(s), bool(a))
    assert "shift_up" in fired


# -- references --------------------------------------------------------------------------------
def test_reference_by_hand() -> None:
    score = np.array([float(i) for i in range(20)] + [float("nan")] * 3)
    anomaly = np.array([False] * 10 + [True] * 4 + [False] * 6 + [True] * 3)
    history = block_history(score, anomaly, block=10, min_blocks=2)
    assert history is not None
    assert history.rows == 20 and history.alarms == 4 and history.block == 10  # NaN scores are not shots
    assert history.counts.tolist() == [0, 4]
    assert history.quantiles == tuple(float(q) for q in np.quantile(np.arange(20.0), REFERENCE_PROBS))
    pit = transform_many(np.arange(20.0), history.quantiles)
    assert history.pit_means.tolist() == pytest.approx(pit.reshape(2, 10).mean(axis=1).tolist())
    ref = reference_for_part(history, pit_inflation=4.0, count_inflation=1.5)
    assert ref.pit_mean == pytest.approx(pit.mean())
    assert ref.pit_sd == pytest.approx(max(history.pit_means.std(ddof=1) * 2.0, pit.std() / math.sqrt(10)))
    assert ref.alarm_counts == ((0, 1), (4, 1)) and ref.count_inflation == 1.5
    # block counts (0, 4): variance 8 (ddof 1) / binomial 2 x (1 - 0.2) = 1.6 -> 5, x 1.5 inflation
    assert ref.dispersion() == pytest.approx(7.5)
    # capped at 2: (0, 2): variance 2 / binomial 1 x 0.9 -> 2.222..., x 1.5
    assert ref.dispersion(cap=2) == pytest.approx(2 / 0.9 * 1.5)
    assert block_history(score, anomaly, block=10, min_blocks=3) is None  # only 2 full blocks


def test_dispersion_and_spread_have_floors() -> None:
    score = np.tile(np.arange(10.0), 10)  # every block the same: no spread between blocks
    history = block_history(score, np.zeros(100, dtype=bool), block=10, min_blocks=2)
    assert history is not None
    ref = reference_for_part(history, pit_inflation=9.0)
    assert ref.dispersion() == 1.0 and ref.dispersion(cap=1) == 1.0
    assert ref.pit_sd == pytest.approx(transform_many(score, ref.quantiles).std() / math.sqrt(10))
    with pytest.raises(ValueError):
        block_history(score, np.zeros(100, dtype=bool), block=10, min_blocks=1)


def test_long_run_inflation_by_batch_means() -> None:
    # one part, 4 batches of 2 blocks: (0, 0), (2, 2), (0, 0), (2, 2); block variance 8/7 (ddof 1),
    # batch-mean variance 4/3: 2 x (4/3) / (8/7) = 7/3
    assert long_run_inflation([np.array([0, 0, 2, 2, 0, 0, 2, 2.0])], batch=2) == pytest.approx(7 / 3)
    # alternating blocks average out within each batch: no inflation (floored at 1)
    assert long_run_inflation([np.array([0, 2, 0, 2, 0, 2, 0, 2.0])], batch=2) == 1.0
    # pooled with weights batches - 1: the first part (weight 3, 7/3) and a second of 2 batches (weight 1):
    second = np.array([0, 0, 4, 4.0])  # block variance 16/3, batch means (0, 4): variance 8 -> 2 x 8 / (16/3) = 3
    assert long_run_inflation([np.array([0, 0, 2, 2, 0, 0, 2, 2.0]), second], batch=2) == pytest.approx((3 * 7 / 3 + 1 * 3) / 4)
    assert long_run_inflation([np.array([1.0, 1.0, 1.0, 1.0]), np.array([1.0])], batch=2) == 1.0  # nothing to pool


def test_manifest_references_round_trip_and_name_the_bad_part() -> None:
    ref = reference()
    raw = {"block": 100, "parts": [{"facility": "F1", "item": "I1", **ref.to_dict()}]}
    assert references_from_manifest(raw) == {("F1", "I1"): ref}
    assert references_from_manifest(None) == {} and references_from_manifest({}) == {}
    broken = {"block": 100, "parts": [{"facility": "F1", "item": "I1", **ref.to_dict(), "quantiles": [3.0, 1.0]}]}
    with pytest.raises(ValueError, match="F1/I1: quantiles"):
        references_from_manifest(broken)
    for field, value in (("alarms", 20_000), ("pit_sd", 0.0), ("count_inflation", 0.5), ("pit_mean", 1.5),
                         ("alarm_counts", [[101, 5]]), ("alarm_counts", [[1, 1]]), ("alarm_counts", [[1, 0], [2, 3]]),
                         ("rows", "many"), ("quantiles", [float("nan")] * 19)):
        with pytest.raises(ValueError, match="F1/I1"):
            references_from_manifest({"block": 100, "parts": [{"facility": "F1", "item": "I1", **ref.to_dict(), field: value}]})


def test_config_refuses_nonsense() -> None:
    for bad in ({"ratio_noisy": 1.0}, {"ratio_blind": 1.0}, {"ratio_blind": 0.0}, {"rate_h": 0.0},
                {"shift_h": float("inf")}, {"burst_cap": 0.5}, {"shift_k": -1.0}):
        with pytest.raises(ValueError):
            DriftConfig(**bad)


# -- the whole watch over any input ---------------------------------------------------------------
shot = st.tuples(st.sampled_from([("F1", "I1"), ("F1", "I2"), ("F9", "new")]),
                 st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(shot, max_size=400))
def test_any_stream_keeps_levels_bounded_and_counts_unreferenced(shots: list) -> None:
    watch = DriftWatch({("F1", "I1"): reference(block=20), ("F1", "I2"): reference(alarms=0, block=20)}, DriftConfig())
    events = watch.observe_many([p[0] for p, _, _ in shots], [p[1] for p, _, _ in shots], [s for _, s, _ in shots],
                                [a for _, _, a in shots])
    assert watch.unreferenced_shots == sum(1 for p, s, _ in shots if p == ("F9", "new") and s is not None and math.isfinite(s))
    for part in watch.parts.values():
        for detector in DETECTORS:
            assert 0.0 <= part.detectors[detector].level <= 2.0
    assert all(detector in DETECTORS and index < len(shots) for index, _, detector in events)


# -- boundaries and messages the rules above rely on -------------------------------------------------
def test_config_messages_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"drift ratio_noisy must be above 1, got 1.0"):
        DriftConfig(ratio_noisy=1.0)
    with pytest.raises(ValueError, match=r"drift ratio_blind must be in \(0, 1\), got 1.0"):
        DriftConfig(ratio_blind=1.0)
    with pytest.raises(ValueError, match=r"drift rate_h must be a positive number, got 0.0"):
        DriftConfig(rate_h=0.0)
    with pytest.raises(ValueError, match=r"drift burst_cap must be at least 1, got 0.5"):
        DriftConfig(burst_cap=0.5)
    assert DriftConfig(burst_cap=1.0).burst_cap == 1.0  # exactly 1: allowed


def test_manifest_reference_edges_are_allowed() -> None:
    edge = {"rows": 400, "alarms": 400, "quantiles": [1.0] * 19, "pit_mean": 1.0, "pit_sd": 0.1,
            "alarm_counts": [[0, 1], [200, 1]], "count_inflation": 1.0, "block": 200}
    ref = PartReference.from_dict(edge)  # every alarm, tied quantiles, pit at 1, a full and an empty block
    assert ref.alarms == ref.rows == 400 and ref.quantiles == (1.0,) * 19
    assert PartReference.from_dict({**edge, "alarms": 0, "pit_mean": 0.0}).alarms == 0
    with pytest.raises(ValueError, match="rows, alarms, block, pit_mean, pit_sd, alarm_counts or count_inflation out of range"):
        PartReference.from_dict({**edge, "alarm_counts": [[201, 2]]})
    with pytest.raises(ValueError, match="quantiles: expected 19 finite non-decreasing numbers"):
        PartReference.from_dict({**edge, "quantiles": [1.0] * 17 + [2.0, 1.5]})  # only the last pair decreases
    assert references_from_manifest({"block": 200}) == {}  # no parts listed


def test_wilson_with_one_row_and_an_upper_bound_of_one() -> None:
    lower, upper = wilson_bounds(1, 1, 1.645)
    assert 0.0 < lower < 1.0 and upper == 1.0
    assert wilson_bounds(0, 1, 1.645)[0] == 0.0


def test_block_history_of_blocks_of_one_and_non_float_input() -> None:
    history = block_history([1, 2, 3], [1, 0, 1], block=1, min_blocks=2)
    assert history is not None and history.counts.tolist() == [1, 0, 1] and history.rows == 3 and history.alarms == 2
    with pytest.raises(ValueError, match="drift reference needs block >= 1 and min_blocks >= 2, got 0 and 2"):
        block_history([1.0], [True], block=0, min_blocks=2)


def test_long_run_inflation_skips_short_or_flat_parts_and_keeps_going() -> None:
    flat = np.ones(8)
    wavy = np.array([0, 0, 2, 2, 0, 0, 2, 2.0])
    assert long_run_inflation([flat, wavy], batch=2) == pytest.approx(7 / 3)  # the flat part is skipped, not the end
    assert long_run_inflation([np.array([5.0]), wavy], batch=2) == pytest.approx(7 / 3)  # one block: skipped
    small = np.array([0, 0.5, 0, 0.5, 0, 0.5, 0, 0.5])  # variance below 1 still counts
    assert long_run_inflation([small], batch=2) == 1.0
    assert long_run_inflation([np.array([0, 0, 0.5, 0.5, 0, 0, 0.5, 0.5])], batch=2) == pytest.approx(7 / 3)


def test_noisy_and_blind_fire_by_name_and_high_rates_have_a_ceiling() -> None:
    noisy = PartWatch(reference(), DriftConfig(rate_h=0.5))
    fired = [e for _ in range(100) for e in noisy.observe(10.0, True)]
    assert "noisy" in fired and noisy.blocks == 1
    blind = PartWatch(reference(), DriftConfig(rate_h=0.5))
    fired = [e for _ in range(100) for e in blind.observe(10.0, False)]
    assert "blind" in fired and blind.drifted() == ("blind",)
    for _ in range(100):
        blind.observe(10.0, False)
    assert blind.blocks == 2
    # a history of half alarms: p1 = 2 x upper is capped below 1, so the noisy detector still works
    busy = PartWatch(reference(rows=1000, alarms=500), DriftConfig())
    p0 = wilson_bounds(500, 1000, 1.645)[1]
    assert busy._noisy is not None and busy._noisy[:3] == (p0, 0.999, math.ceil(1.5 * 100 * 0.999))
    # the cap is at least one alarm: a tiny rate and a tiny burst factor
    tiny = PartWatch(PartReference(10**7, 1, QUANTILES, 0.5, 0.02, ((0, 100),), 1.0, 10), DriftConfig(burst_cap=1.0))
    assert tiny._noisy is not None and tiny._noisy[2] == 1


def test_the_blind_detector_divides_by_the_dispersion() -> None:
    config = DriftConfig(rate_h=1000.0)
    spread = PartReference(10_000, 200, QUANTILES, 0.5, 0.02, ((0, 50), (4, 50)), 1.0, 100)
    watch = PartWatch(spread, config)
    p0 = wilson_bounds(200, 10_000, config.confidence_z)[0]
    for _ in range(100):
        watch.observe(10.0, False)
    assert spread.dispersion() > 1
    assert watch.detectors["blind"].statistic == pytest.approx(block_llr(0, 100, p0, 0.25 * p0) / spread.dispersion())


def test_observe_many_passes_each_shot_through_unchanged() -> None:
    watch = DriftWatch({("F1", "I1"): reference(block=10)}, DriftConfig(rate_h=0.3))
    events = watch.observe_many(["F1"] * 10, ["I1"] * 10, [10.0] * 10, [1] * 10)
    assert (9, ("F1", "I1"), "noisy") in events and watch.parts[("F1", "I1")].blocks == 1
    assert watch.observe("F1", "I1", 10.0, True) == [] and watch.parts[("F1", "I1")].alarms == 1


def test_the_noisy_dispersion_is_that_of_the_capped_history_counts() -> None:
    spread = PartReference(10_000, 300, QUANTILES, 0.5, 0.02, ((0, 50), (20, 50)), 1.0, 100)
    watch = PartWatch(spread, DriftConfig())
    assert watch._noisy is not None
    cap = watch._noisy[2]
    assert cap < 20 and watch._noisy[3] == pytest.approx(spread.dispersion(cap))
    assert spread.dispersion(cap) != pytest.approx(spread.dispersion())


def test_defaults_and_leftovers_of_a_reference() -> None:
    score = np.arange(25.0)  # 2 full blocks of 10 and 5 left over
    history = block_history(score, np.zeros(25, dtype=bool), block=10, min_blocks=2)
    assert history is not None and len(history.pit_means) == 2 and history.rows == 25
    plain = reference_for_part(history)  # no inflation by default
    assert plain.pit_sd == pytest.approx(max(history.pit_means.std(ddof=1), history.pit_iid_sd))
    assert plain.count_inflation == 1.0
    one = {"rows": 4, "alarms": 0, "quantiles": [1.0] * 19, "pit_mean": 0.5, "pit_sd": 0.1,
           "alarm_counts": [[0, 4]], "count_inflation": 1.0, "block": 1}
    assert PartReference.from_dict(one).block == 1  # blocks of one shot are a reference too
    with pytest.raises(ValueError, match=r"^rows, alarms, block, pit_mean"):
        PartReference.from_dict({**one, "block": 0})
