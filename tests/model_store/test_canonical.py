"""A plant's exports as canonical frames (model_store/canonical.py): renamed, typed, and refused
with the source, the column and the first bad row."""
import numpy as np
import pandas as pd
import pytest

from model_store.canonical import canonical_lots, canonical_records
from model_store.errors import DataError
from tests.support.schemas import two_maker_schema


def _records(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"id": [1, 2], "ts": ["2026-01-01 08:00:00", "2026-01-01 08:00:30"], "fac": ["F1", "F2"], "part": ["X", "Y"],
         "mk": ["A", "B"], "s1": [1.0, np.nan], "p1": [2.0, np.nan], "p2": ["3.5", None], "t1": [np.nan, 7.0], "q1": [np.nan, 8.0]}
    )
    for key, value in changes.items():
        frame[key] = value
    return frame


def test_canonical_records_renames_and_types() -> None:
    out = canonical_records(_records(), two_maker_schema())
    assert list(out["record_id"]) == ["1", "2"] and list(out["lot_date"]) == ["2026-01-01"] * 2
    assert out["p2"].dtype == float and out["maker"].tolist() == ["A", "B"]


@pytest.mark.parametrize(
    "frame, message",
    [
        (_records().drop(columns=["fac"]), "missing column 'fac'"),
        (_records(mk=["A", "Z"]), "unknown maker in column 'mk', row 2"),
        (_records(p1=[1.0, "hot"]), "column 'p1' must be numeric; row 2 (value 'hot')"),
        (_records(ts=["2026-01-01", "yesterday"]), "column 'ts' must hold timestamps"),
        (_records().iloc[0:0], "no rows"),
    ],
    ids=["missing-column", "unknown-maker", "text-in-numeric", "bad-timestamp", "empty"],
)
def test_bad_records_name_the_problem(frame, message) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_records(frame, two_maker_schema(), source="records.csv")


def test_lots_validation() -> None:
    lots = pd.DataFrame({"facility": ["F1"], "item": ["X"], "lot_date": ["2026-01-01"], "good_qty": [10], "bad_qty": [-1]})
    with pytest.raises(DataError, match="bad_qty' must be a non-negative count"):
        canonical_lots(lots, two_maker_schema())
