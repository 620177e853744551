"""Record columns (model_store/serving/columns.py): the decoder's output and the scoring core's
input without a pandas frame on the hot path."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model_store.serving.columns import FrameColumns, RecordColumns


def _columns() -> RecordColumns:
    ids = np.array(["a", "b", "c"], dtype=object)
    items = np.array(["X", None, "Y"], dtype=object)
    stamps = np.array(["2026-01-01T00:00", "2026-01-01T00:01", "NaT"], dtype="datetime64[us]")
    return RecordColumns({"record_id": ids, "item": items, "timestamp": stamps, "temp": np.array([1.0, np.nan, 3.0])})


def test_columns_are_read_by_name_and_count_their_rows() -> None:
    columns = _columns()
    assert columns.rows == 3 and list(columns) == ["record_id", "item", "timestamp", "temp"]
    assert "temp" in columns and "nope" not in columns
    with pytest.raises(KeyError):
        columns["nope"]


def test_columns_of_different_lengths_are_refused_with_the_lengths() -> None:
    with pytest.raises(ValueError, match=r"different lengths: \[1, 2\]"):
        RecordColumns({"a": np.zeros(1), "b": np.zeros(2)})
    with pytest.raises(ValueError, match=r"lengths \[2\], expected 3"):
        RecordColumns({"a": np.zeros(2)}, 3)


def test_take_and_concat_keep_every_column_in_row_order() -> None:
    columns = _columns()
    taken = columns.take([2, 0])
    assert taken.rows == 2 and taken["record_id"].tolist() == ["c", "a"] and taken["temp"].tolist() == [3.0, 1.0]
    both = RecordColumns.concat([taken, columns.take([1])], columns.take([]))
    assert both["record_id"].tolist() == ["c", "a", "b"] and both.rows == 3
    empty = RecordColumns.concat([], columns.take([]))
    assert empty.rows == 0 and list(empty) == list(columns)


def test_the_frame_keeps_object_columns_as_objects_with_none_not_nan() -> None:
    frame = _columns().frame
    assert frame["item"].dtype == object and frame["item"].tolist() == ["X", None, "Y"]
    assert frame["timestamp"].dtype == np.dtype("datetime64[us]") and frame.index.equals(pd.RangeIndex(3))
    assert _columns().frame is not frame and (columns := _columns()).frame is columns.frame  # built once per object


def test_a_frame_is_read_column_by_column_when_asked_and_only_then() -> None:
    frame = pd.DataFrame({"record_id": ["a", "b"], "temp": [1.0, 2.0]}, index=[10, 11])
    columns = RecordColumns.of(frame)
    assert isinstance(columns, FrameColumns) and columns.rows == 2 and list(columns) == ["record_id", "temp"]
    assert columns._columns == {}  # nothing converted yet
    assert columns["temp"].tolist() == [1.0, 2.0] and set(columns._columns) == {"temp"}
    assert columns.frame.index.equals(pd.RangeIndex(2))  # the frame's own index does not leak through
    assert RecordColumns.of(columns) is columns
