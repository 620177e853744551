"""Lot drift rules (model_store/serving/lot_drift.py): the reference, the Poisson increments and the
CUSUMs, hand-computed, and their false-alarm and detection behaviour on simulated lots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model_store.serving.lot_drift import (
    MIN_EXPECTED,
    LotDriftConfig,
    LotReference,
    LotWatch,
    lot_reference,
    lot_references_from_manifest,
    poisson_llr,
)


def test_the_reference_is_alarms_per_expected_bad_part_with_pearson_dispersion() -> None:
    # ratio = 12 / 8 = 1.5; means 3, 3, 6; chi2 = (2-3)^2/3 + (4-3)^2/3 + (6-6)^2/6 = 2/3; per dof 1/3 -> floor 1
    assert lot_reference(np.array([2, 4, 6]), np.array([2.0, 2.0, 4.0]), 3) == LotReference(3, 1.5, 1.0)
    # spread beyond Poisson: ratio 1, means 5, 5; chi2 = 25/5 + 25/5 = 10 over 1 dof
    assert lot_reference(np.array([0, 10]), np.array([5.0, 5.0]), 2) == LotReference(2, 1.0, 10.0)


def test_uninformative_lots_are_left_out_and_too_few_give_none() -> None:
    # the lot with neither a bad part nor an alarm says nothing; NaN too
    assert lot_reference(np.array([1, 0, 1, np.nan]), np.array([1.0, 0.0, 1.0, 1.0]), 2) == LotReference(2, 1.0, 1.0)
    assert lot_reference(np.array([1, 1]), np.array([1.0, 1.0]), 3) is None  # fewer than min_lots
    assert lot_reference(np.array([0, 0, 0]), np.array([1.0, 1.0, 1.0]), 2) is None  # never an alarm: no ratio
    assert lot_reference(np.array([1, 2]), np.array([0.0, 0.0]), 2) is None  # no bad part ever expected
    assert lot_reference(np.array([3]), np.array([1.0]), 1) is None  # one lot cannot give a spread


def test_poisson_llr_by_hand() -> None:
    assert poisson_llr(4, 2.0, 4.0) == pytest.approx(4 * math.log(2) - 2.0)
    assert poisson_llr(0, 2.0, 0.5) == pytest.approx(1.5)


def test_the_watch_adds_increments_scaled_by_the_dispersion() -> None:
    watch = LotWatch(LotReference(20, 1.0, 2.0), LotDriftConfig(h=6.0))
    assert watch.observe_lot(10, 2.0) == []  # more: (10 ln 2 - 2) / 2 = 2.466
    assert watch.detectors["more_than_lots"].statistic == pytest.approx((10 * math.log(2) - 2.0) / 2)
    assert watch.detectors["fewer_than_lots"].statistic == 0.0  # 10 ln(0.25) + 1.5 < 0
    assert watch.observe_lot(10, 2.0) == []  # 4.93
    assert watch.observe_lot(10, 2.0) == ["more_than_lots"]  # 7.40 >= 6: on
    assert watch.observe_lot(10, 2.0) == []  # still on: not "just came on"
    assert watch.lots == 4


def test_fewer_alarms_than_lots_flags_the_blind_side() -> None:
    watch = LotWatch(LotReference(20, 1.0, 1.0), LotDriftConfig(h=6.0))
    flags = [watch.observe_lot(0, 3.0) for _ in range(3)]  # each +2.25: 2.25, 4.5, 6.75
    assert flags == [[], [], ["fewer_than_lots"]]


def test_a_lot_without_bad_parts_counts_as_half_of_one() -> None:
    watch = LotWatch(LotReference(20, 2.0, 1.0))
    watch.observe_lot(5, 0.0)
    mean0 = 2.0 * MIN_EXPECTED
    assert watch.detectors["more_than_lots"].statistic == pytest.approx(poisson_llr(5, mean0, 2 * mean0))


@pytest.mark.parametrize("alarms, expected", [(-1, 1.0), (1, math.nan), (1, -0.5), (1, math.inf)])
def test_nonsense_lots_are_skipped(alarms: int, expected: float) -> None:
    watch = LotWatch(LotReference(20, 1.0, 1.0))
    assert watch.observe_lot(alarms, expected) == [] and watch.lots == 0


def test_false_flags_stay_rare_at_the_reference_ratio() -> None:
    rng = np.random.default_rng(3)
    flags = 0
    for _part in range(20):  # 20 parts x 400 lots of Poisson alarms at the reference ratio
        watch = LotWatch(LotReference(50, 1.2, 1.0))
        expected = rng.uniform(0.5, 8.0, 400)
        for e, a in zip(expected, rng.poisson(1.2 * expected)):
            flags += len(watch.observe_lot(int(a), float(e)))
    assert flags <= 20 * 2 * 1  # Lorden: <= one per e^6 ~ 400 lots and detector; seen: far fewer
    print("false flags in 8,000 lots:", flags)


def test_a_doubled_or_vanished_alarm_rate_is_found_within_days() -> None:
    rng = np.random.default_rng(4)
    more, fewer = LotWatch(LotReference(50, 1.0, 1.0)), LotWatch(LotReference(50, 1.0, 1.0))
    found_more = found_fewer = None
    for lot in range(1, 60):
        if found_more is None and more.observe_lot(int(rng.poisson(3 * 4.0)), 4.0):
            found_more = lot
        if found_fewer is None and fewer.observe_lot(int(rng.poisson(0.1 * 4.0)), 4.0):
            found_fewer = lot
    assert found_more is not None and found_more <= 5 and found_fewer is not None and found_fewer <= 5


@pytest.mark.parametrize("field, value", [("ratio_more", 1.0), ("ratio_fewer", 1.0), ("ratio_fewer", 0.0), ("h", 0.0),
                                          ("h", math.inf)])
def test_config_out_of_range_is_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        LotDriftConfig(**{field: value})


def test_references_from_a_manifest_and_bad_ones_named() -> None:
    drift = {"parts": [{"facility": "F1", "item": "I1", "lots": {"lots": 12, "ratio": 0.8, "dispersion": 1.4}},
                       {"facility": "F2", "item": "I2"}]}
    assert lot_references_from_manifest(drift) == {("F1", "I1"): LotReference(12, 0.8, 1.4)}
    assert lot_references_from_manifest(None) == {}
    drift["parts"][0]["lots"]["dispersion"] = 0.5
    with pytest.raises(ValueError, match="lot reference of F1/I1: lots reference out of range"):
        lot_references_from_manifest(drift)
    assert LotReference.from_dict(LotReference(3, 2.0, 1.0).to_dict()) == LotReference(3, 2.0, 1.0)


def test_reference_boundaries_by_hand() -> None:
    # a lot with less than one bad part expected and no alarm still counts; one with an alarm and
    # no bad part expected too; one alarm in all is enough for a ratio; less than one expected in all too
    # ratio 1 / 0.8; means 0.375, 0.625; chi2 = 0.625^2 / 0.375 + 0.625^2 / 0.625 = 5/3 over 1
    small = lot_reference(np.array([1, 0]), np.array([0.3, 0.5]), 2)
    assert small.lots == 2 and small.ratio == pytest.approx(1.25) and small.dispersion == pytest.approx(5 / 3)
    assert lot_reference(np.array([1, 1]), np.array([0.0, 0.8]), 2).lots == 2
    # a zero mean (no bad part expected) stays out of the chi-square; a mean of exactly 1 is in:
    # ratio 11 / 4.4 = 2.5; means 0, 5, 5, 1; chi2 = 25/5 + 9/5 + 1/1 = 7.8 over 3
    reference = lot_reference(np.array([1, 0, 8, 2]), np.array([0.0, 2.0, 2.0, 0.4]), 2)
    assert reference.ratio == pytest.approx(2.5) and reference.dispersion == pytest.approx(7.8 / 3)


def test_the_fewer_increment_by_hand() -> None:
    watch = LotWatch(LotReference(20, 1.0, 1.0))
    watch.observe_lot(0, 3.0)  # mean0 3, mean1 0.75: 0 * ln(0.25) - (0.75 - 3) = 2.25
    assert watch.detectors["fewer_than_lots"].statistic == pytest.approx(2.25)


def test_limits_of_the_config_and_reference_are_allowed() -> None:
    assert LotDriftConfig(h=0.5).h == 0.5
    assert LotReference.from_dict({"lots": 2, "ratio": 0.01, "dispersion": 1.0}).lots == 2
    with pytest.raises(ValueError, match="lots reference out of range"):
        LotReference.from_dict({"lots": 2, "ratio": 0.0, "dispersion": 1.0})
    with pytest.raises(ValueError, match="lots reference out of range"):
        LotReference.from_dict({"lots": 1, "ratio": 1.0, "dispersion": 1.0})


def test_every_part_with_a_reference_is_read_whatever_comes_before_it() -> None:
    drift = {"parts": [{"facility": "F0", "item": "I0"},
                       {"facility": "F1", "item": "I1", "lots": {"lots": 12, "ratio": 0.8, "dispersion": 1.4}}]}
    assert list(lot_references_from_manifest(drift)) == [("F1", "I1")]
