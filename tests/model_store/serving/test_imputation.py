"""State imputation: forward within a facility, then memory, then backward, then the fallback.

Each precedence and each facility boundary is pinned by a hand-computed case; a property test
compares the vectorised code with a plain per-facility loop on random interleaved batches.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.imputation import _last_valid, fill_with_means, impute_state


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "facility": ["F1", "F2", "F1", "F1", "F2"],
            "timestamp": pd.to_datetime(["2026-01-01 00:00:02", "2026-01-01 00:00:00", "2026-01-01 00:00:01", "2026-01-01 00:00:03",
                                         "2026-01-01 00:00:01"]),
            "item": [None, "B", "A", None, None],
            "temp": [np.nan, 200.0, 210.0, np.nan, np.nan],
        }
    )


def _batch(facility: list[str], seconds: list[int], **columns: list[Any]) -> pd.DataFrame:
    stamps = pd.Timestamp("2026-01-01") + pd.to_timedelta(seconds, unit="s")
    return pd.DataFrame({"facility": facility, "timestamp": stamps, **columns})


def test_forward_fill_within_facility_in_time_order() -> None:
    filled, mask = impute_state(_frame(), ["item", "temp"], fallback={})
    assert list(filled["item"]) == ["A", "B", "A", "A", "B"]
    assert list(filled["temp"]) == [210.0, 200.0, 210.0, 210.0, 200.0]
    assert mask[:, 0].tolist() == [True, False, False, True, True]
    assert mask.dtype == np.bool_ and mask.shape == (5, 2)


# -- _last_valid: the facility boundary ---------------------------------------------------------
def test_last_valid_never_reaches_into_the_previous_facility() -> None:
    # sorted rows 0-2 are facility A, rows 3-4 facility B; B's first row has no value of its own
    valid = np.array([True, False, False, False, True])
    starts = np.array([0, 0, 0, 3, 3])
    assert _last_valid(valid, starts).tolist() == [0, 0, 0, -1, 4]


def test_last_valid_accepts_a_value_on_the_facilitys_first_row() -> None:
    valid = np.array([False, True, False, True, False])
    starts = np.array([0, 1, 1, 3, 3])  # a one-row facility, then two two-row facilities
    assert _last_valid(valid, starts).tolist() == [-1, 1, 1, 3, 3]


def test_interleaved_facilities_are_filled_only_from_their_own_machine() -> None:
    # F2's value is the most recent in time, but F1's gap must come from F1's own history.
    frame = _batch(["F1", "F2", "F1", "F2", "F1"], [0, 1, 2, 3, 4],
                   temp=[210.0, 190.0, np.nan, np.nan, np.nan], item=["A", None, None, "B", None])
    filled, mask = impute_state(frame, ["temp", "item"], fallback={}, backward=False)
    assert filled["temp"].tolist() == [210.0, 190.0, 210.0, 190.0, 210.0]
    # F2's first row has no earlier F2 value: F1's "A" must not leak in, it stays missing
    item = filled["item"].tolist()
    assert pd.isna(item[1]) and item[:1] + item[2:] == ["A", "A", "B", "A"]
    assert mask.tolist() == [[False, False], [False, False], [True, True], [True, False], [True, True]]


def test_row_order_and_other_columns_are_kept() -> None:
    frame = _frame().assign(cycle=[1.0, 2.0, np.nan, 4.0, 5.0])
    filled, _ = impute_state(frame, ["temp"], fallback={})
    assert filled.index.tolist() == frame.index.tolist()
    assert filled["timestamp"].tolist() == frame["timestamp"].tolist()
    assert np.isnan(filled["cycle"].iloc[2]) and filled["cycle"].iloc[3] == 4.0  # not a state column
    assert frame["temp"].isna().sum() == 3  # the caller's frame is not modified


# -- backward fill ------------------------------------------------------------------------------
def test_backward_fill_is_the_default_and_stays_within_the_facility() -> None:
    # F1 (sorted first) only has gaps; F2's first value is right after it in sorted order.
    frame = _batch(["F2", "F1", "F2", "F1"], [0, 1, 2, 3], temp=[np.nan, np.nan, 205.0, np.nan])
    filled, mask = impute_state(frame, ["temp"], fallback={})
    assert filled["temp"].iloc[0] == 205.0  # F2's earlier gap: the next F2 value
    assert np.isnan(filled["temp"].iloc[1]) and np.isnan(filled["temp"].iloc[3])  # nothing of F1's own
    assert mask[:, 0].tolist() == [True, False, False, False]


def test_backward_fill_uses_a_value_on_the_facilitys_last_row() -> None:
    frame = _batch(["F1", "F1", "F1", "F2"], [0, 1, 2, 0], temp=[np.nan, np.nan, 7.0, 9.0])
    filled, _ = impute_state(frame, ["temp"], fallback={})
    assert filled["temp"].tolist() == [7.0, 7.0, 7.0, 9.0]


def test_backward_fill_takes_the_next_value_not_the_last() -> None:
    frame = _batch(["F1"] * 4, [0, 1, 2, 3], temp=[np.nan, 1.0, np.nan, 3.0])
    filled, _ = impute_state(frame, ["temp"], fallback={})
    assert filled["temp"].tolist() == [1.0, 1.0, 1.0, 3.0]


def test_without_backward_a_leading_gap_stays() -> None:
    frame = _batch(["F1", "F1"], [0, 1], temp=[np.nan, 4.0])
    filled, mask = impute_state(frame, ["temp"], fallback={}, backward=False)
    assert np.isnan(filled["temp"].iloc[0]) and not mask[0, 0]


# -- precedence: forward > memory > backward > fallback -----------------------------------------
def test_forward_fill_from_the_first_sorted_row_beats_the_fallback() -> None:
    frame = _batch(["F1", "F1"], [0, 1], item=["A", None])
    filled, mask = impute_state(frame, ["item"], fallback={"item": "Z"})
    assert filled["item"].tolist() == ["A", "A"] and mask[:, 0].tolist() == [False, True]


def test_memory_beats_backward_fill() -> None:
    # the machine's last known state (previous batch) is a better guess than a later change
    frame = _batch(["F1", "F1"], [0, 1], item=[None, "B"])
    filled, _ = impute_state(frame, ["item"], fallback={}, memory={"F1": {"item": "A"}})
    assert filled["item"].tolist() == ["A", "B"]


def test_backward_fill_beats_the_fallback() -> None:
    frame = _batch(["F1", "F1"], [0, 1], item=[None, "B"])
    filled, _ = impute_state(frame, ["item"], fallback={"item": "Z"})
    assert filled["item"].tolist() == ["B", "B"]


def test_memory_seeds_gaps_and_is_updated() -> None:
    frame = pd.DataFrame({"facility": ["F7"], "timestamp": pd.to_datetime(["2026-01-01"]), "item": [None], "temp": [np.nan]})
    memory = {"F7": {"item": "Z", "temp": 190.0}}
    filled, mask = impute_state(frame, ["item", "temp"], fallback={}, memory=memory, backward=False)
    assert filled["item"].iloc[0] == "Z" and filled["temp"].iloc[0] == 190.0 and mask.all()
    impute_state(_frame(), ["item", "temp"], fallback={}, memory=memory)
    assert memory["F1"] == {"item": "A", "temp": 210.0}


def test_memory_of_other_facilities_or_columns_is_not_used() -> None:
    frame = _batch(["F1", "F1", "F2"], [0, 1, 0], item=[None, None, "C"])
    memory: dict[str, dict[str, Any]] = {"F9": {"item": "X"}, "F1": {"temp": 3.0}, "F2": {"item": "Y"}}
    filled, mask = impute_state(frame, ["item"], fallback={"item": "Z"}, memory=memory, backward=False)
    assert filled["item"].tolist() == ["Z", "Z", "C"]
    assert mask[:, 0].tolist() == [True, True, False]


def test_memory_without_the_facility_falls_through_to_the_fallback() -> None:
    frame = _batch(["F1"], [0], temp=[np.nan])
    filled, _ = impute_state(frame, ["temp"], fallback={"temp": 5.0}, memory={"F9": {"temp": 1.0}})
    assert filled["temp"].tolist() == [5.0]


def test_memory_fills_only_its_facilitys_rows() -> None:
    frame = _batch(["F1", "F2", "F2", "F1"], [0, 0, 1, 1], temp=[np.nan, 5.0, 6.0, np.nan])
    filled, _ = impute_state(frame, ["temp"], fallback={}, memory={"F1": {"temp": 1.0}})
    assert filled["temp"].tolist() == [1.0, 5.0, 6.0, 1.0]


def test_memory_is_updated_for_every_facility_with_its_latest_value() -> None:
    # F1's only value sits on sorted row 0; F3 (sorted last) ends on a gap filled forward.
    frame = _batch(["F3", "F1", "F2", "F3", "F1", "F2"], [0, 0, 0, 5, 9, 9],
                   temp=[8.0, 1.0, np.nan, np.nan, np.nan, 4.0])
    memory: dict[str, dict[str, Any]] = {"F2": {"temp": 2.0}}
    impute_state(frame, ["temp"], fallback={}, memory=memory)
    assert memory == {"F1": {"temp": 1.0}, "F2": {"temp": 4.0}, "F3": {"temp": 8.0}}


def test_memory_is_not_updated_for_a_facility_with_nothing_known() -> None:
    memory: dict[str, dict[str, Any]] = {}
    impute_state(_batch(["F1"], [0], temp=[np.nan]), ["temp"], fallback={}, memory=memory)
    assert memory == {}


# -- columns and batches at the edges -----------------------------------------------------------
def test_a_column_absent_from_the_batch_is_filled_from_the_fallback() -> None:
    frame = _batch(["F1", "F2"], [0, 0], temp=[1.0, 2.0])
    filled, mask = impute_state(frame, ["temp", "speed"], fallback={"speed": 40.0})
    assert filled["speed"].tolist() == [40.0, 40.0] and mask[:, 1].all() and not mask[:, 0].any()


def test_a_column_absent_without_fallback_is_all_missing() -> None:
    filled, mask = impute_state(_batch(["F1", "F1"], [0, 1], temp=[1.0, 2.0]), ["speed"], fallback={})
    assert filled["speed"].isna().all() and filled["speed"].dtype == float and not mask.any()


def test_a_gap_nothing_can_fill_stays_as_it_came() -> None:
    frame = _batch(["F1", "F2"], [0, 0], item=[np.nan, "B"])
    filled, mask = impute_state(frame, ["item"], fallback={})
    first = filled["item"].iloc[0]
    assert isinstance(first, float) and math.isnan(first) and not mask[0, 0]


def test_an_empty_batch_or_no_columns_changes_nothing() -> None:
    memory = {"F1": {"temp": 1.0}}
    empty = _batch([], [], temp=[])
    filled, mask = impute_state(empty, ["temp"], fallback={"temp": 5.0}, memory=memory)
    assert filled.empty and mask.shape == (0, 1) and memory == {"F1": {"temp": 1.0}}
    frame = _batch(["F1"], [0], temp=[np.nan])
    filled, mask = impute_state(frame, [], fallback={"temp": 5.0}, memory=memory)
    assert np.isnan(filled["temp"].iloc[0]) and mask.shape == (1, 0)


def test_fallback_when_nothing_is_known() -> None:
    frame = pd.DataFrame({"facility": ["F1"], "timestamp": pd.to_datetime(["2026-01-01"]), "temp": [np.nan]})
    filled, mask = impute_state(frame, ["temp"], fallback={"temp": 5.0})
    assert filled["temp"].iloc[0] == 5.0 and mask[0, 0]


def test_fill_with_means() -> None:
    x = np.array([[1.0, np.nan], [np.nan, 4.0]])
    filled, mask = fill_with_means(x, np.array([10.0, 20.0]))
    assert filled.tolist() == [[1.0, 20.0], [10.0, 4.0]] and mask.tolist() == [[False, True], [True, False]]
    complete = np.array([[1.0, 2.0]])
    same, none = fill_with_means(complete, np.array([10.0, 20.0]))
    assert same is complete and none.tolist() == [[False, False]]


# -- property: the vectorised code agrees with a plain loop per facility ------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def reference(frame: pd.DataFrame, columns: list[str], fallback: dict[str, Any],
              memory: dict[str, dict[str, Any]] | None, backward: bool) -> tuple[dict[str, list[Any]], np.ndarray, dict]:
    """The documented rule, one facility and one column at a time."""
    filled = {c: list(frame[c]) if c in frame else [math.nan] * len(frame) for c in columns}
    mask = np.zeros((len(frame), len(columns)), dtype=bool)
    new_memory = {f: dict(v) for f, v in (memory or {}).items()}
    stamps = list(frame["timestamp"])
    for facility in sorted(set(frame["facility"])):
        rows = sorted((i for i in range(len(frame)) if frame["facility"].iloc[i] == facility), key=lambda i: (stamps[i], i))
        for j, column in enumerate(columns):
            raw = [filled[column][i] for i in rows]
            seen: Any = None
            for k, i in enumerate(rows):
                if not _missing(raw[k]):
                    seen = raw[k]
                    continue
                later = [v for v in raw[k + 1:] if not _missing(v)]
                remembered = (memory or {}).get(facility, {}).get(column)
                if seen is not None:
                    value = seen
                elif not _missing(remembered):
                    value = remembered
                elif backward and later:
                    value = later[0]
                else:
                    value = fallback.get(column)
                if not _missing(value):
                    filled[column][i] = value
                    mask[i, j] = True
            known = [filled[column][i] for i in rows if not _missing(filled[column][i])]
            if memory is not None and known:
                new_memory.setdefault(facility, {})[column] = known[-1]
    return filled, mask, new_memory


facilities = st.sampled_from(["F1", "F2", "F3"])
items = st.sampled_from([None, "A", "B"])
temps = st.sampled_from([math.nan, 1.0, 2.0, 3.0])


@st.composite
def batches(draw):
    n = draw(st.integers(1, 12))
    frame = _batch(draw(st.lists(facilities, min_size=n, max_size=n)), draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
                   item=draw(st.lists(items, min_size=n, max_size=n)), temp=draw(st.lists(temps, min_size=n, max_size=n)))
    memory = draw(st.none() | st.dictionaries(facilities, st.fixed_dictionaries({}, optional={"item": items, "temp": temps}), max_size=3))
    fallback = draw(st.fixed_dictionaries({}, optional={"item": st.just("Z"), "temp": st.just(9.0), "speed": st.just(40.0)}))
    return frame, memory, fallback, draw(st.booleans())


@settings(max_examples=100, deadline=None)
@given(batches())
def test_matches_a_per_facility_loop(case) -> None:
    frame, memory, fallback, backward = case
    columns = ["item", "temp", "speed"]
    expected, expected_mask, expected_memory = reference(frame, columns, fallback, memory, backward)
    live = None if memory is None else {f: dict(v) for f, v in memory.items()}
    filled, mask = impute_state(frame, columns, fallback=fallback, memory=live, backward=backward)
    for column in columns:
        got = list(filled[column])
        assert [None if _missing(v) else v for v in got] == [None if _missing(v) else v for v in expected[column]], column
    assert mask.tolist() == expected_mask.tolist()
    if memory is not None:
        assert live == expected_memory


def test_a_batch_whose_item_column_is_all_blank_takes_the_remembered_text() -> None:
    # A micro-batch where no record names its item reads as a float NaN column; the facility's
    # remembered item is text and must fill it (it used to raise "could not convert string to float").
    frame = pd.DataFrame({"facility": ["F1", "F2"], "timestamp": pd.to_datetime(["2026-01-01", "2026-01-01"]),
                          "item": [np.nan, np.nan], "set_temp": [np.nan, 210.0]})
    memory = {"F1": {"item": "ITM-7", "set_temp": 200.0}}
    out, imputed = impute_state(frame, ["item", "set_temp"], {}, memory=memory, backward=False)
    assert out["item"].tolist()[0] == "ITM-7" and pd.isna(out["item"].tolist()[1])
    assert out["set_temp"].tolist() == [200.0, 210.0] and out["set_temp"].dtype == float
    assert imputed.tolist() == [[True, True], [False, False]]
    # a text fallback alike
    out, imputed = impute_state(frame, ["item"], {"item": "ITM-0"}, memory=None, backward=False)
    assert out["item"].tolist() == ["ITM-0", "ITM-0"] and imputed[:, 0].all()
