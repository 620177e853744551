"""The one back-off helper: hand-computed sequences, reset, jitter bounds, refused arguments."""
from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.backoff import Backoff


def first(backoff: Backoff, n: int) -> list[float]:
    return list(itertools.islice(backoff, n))


class Fixed(random.Random):
    """A random source that always draws ``value`` (the jitter arithmetic by hand)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_kafka_resend_sequence_doubles_from_a_tenth_to_five_seconds():
    # 0.1 doubled: 0.2, 0.4, 0.8, 1.6, 3.2, then 6.4 is capped at 5.0 and stays there
    assert first(Backoff(0.1, 5.0), 9) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_store_retry_sequence_doubles_from_a_fifth_to_ten_seconds():
    assert first(Backoff(0.2, 10.0), 8) == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])


def test_other_factors_and_a_cap_equal_to_the_initial_pause():
    assert first(Backoff(1.0, 20.0, factor=3.0), 5) == [1.0, 3.0, 9.0, 20.0, 20.0]  # 27 > 20
    assert first(Backoff(0.5, 0.5), 3) == [0.5, 0.5, 0.5]
    assert first(Backoff(0.5, 4.0, factor=1.0), 3) == [0.5, 0.5, 0.5]


def test_reset_after_a_success_starts_again_from_the_initial_pause():
    backoff = Backoff(0.1, 5.0)
    assert first(backoff, 3) == pytest.approx([0.1, 0.2, 0.4]) and backoff.failures == 3
    backoff.reset()
    assert backoff.failures == 0
    assert first(backoff, 2) == pytest.approx([0.1, 0.2])


def test_jitter_shortens_a_pause_by_at_most_its_fraction_and_never_moves_the_schedule():
    # jitter 0.5 and a draw of 0.5: each pause is cut by 0.5 * 0.5 = 25 %
    assert first(Backoff(1.0, 8.0, jitter=0.5, rng=Fixed(0.5)), 5) == [0.75, 1.5, 3.0, 6.0, 6.0]
    # a draw of 0: the deterministic pause itself (jitter never lengthens a pause past cap)
    assert first(Backoff(1.0, 8.0, jitter=0.5, rng=Fixed(0.0)), 5) == [1.0, 2.0, 4.0, 8.0, 8.0]
    # full jitter, a draw close to 1: close to zero, never negative
    assert first(Backoff(1.0, 8.0, jitter=1.0, rng=Fixed(0.75)), 2) == [0.25, 0.5]


@pytest.mark.parametrize("args, message", [
    ((0.0, 1.0), "initial pause must be > 0"),
    ((-1.0, 1.0), "initial pause must be > 0"),
    ((2.0, 1.0), "cap (1.0) must be >= its initial pause (2.0)"),
    ((1.0, 2.0, 0.5), "factor must be >= 1"),
    ((1.0, 2.0, 2.0, 1.5), "jitter must be a fraction in [0, 1]"),
    ((1.0, 2.0, 2.0, -0.1), "jitter must be a fraction in [0, 1]"),
    ((float("nan"), 1.0), "initial pause must be > 0"),
])
def test_nonsense_arguments_are_refused_with_one_line(args, message):
    with pytest.raises(ValueError) as excinfo:
        Backoff(*args)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


settings = dict(
    initial=st.floats(1e-3, 100.0),
    growth=st.floats(1.0, 1e4),  # cap = initial * growth
    factor=st.floats(1.0, 10.0),
    n=st.integers(1, 40),
)


@given(**settings)
def test_without_jitter_the_nth_pause_is_initial_times_factor_to_the_n_capped(initial, growth, factor, n):
    cap = initial * growth
    pauses = first(Backoff(initial, cap, factor), n)
    expected = [min(initial * factor**k, cap) for k in range(n)]
    assert pauses == pytest.approx(expected, rel=1e-9)
    assert all(a <= b for a, b in itertools.pairwise(pauses)) and max(pauses) <= cap


@given(**settings, jitter=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_with_jitter_every_pause_lies_between_its_cut_and_the_deterministic_pause(initial, growth, factor, n, jitter, seed):
    cap = initial * growth
    plain = first(Backoff(initial, cap, factor), n)
    jittered = first(Backoff(initial, cap, factor, jitter, rng=random.Random(seed)), n)
    for pause, bound in zip(jittered, plain):
        assert (1.0 - jitter) * bound * (1 - 1e-12) <= pause <= bound
