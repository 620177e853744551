import numpy as np
import pandas as pd

from model_store.imputation import fill_with_means, impute_state


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "facility": ["F1", "F2", "F1", "F1", "F2"],
            "timestamp": pd.to_datetime(["2026-01-01 00:00:02", "2026-01-01 00:00:00", "2026-01-01 00:00:01", "2026-01-01 00:00:03", "2026-01-01 00:00:01"]),
            "item": [None, "B", "A", None, None],
            "temp": [np.nan, 200.0, 210.0, np.nan, np.nan],
        }
    )


def test_forward_fill_within_facility_in_time_order() -> None:
    filled, mask = impute_state(_frame(), ["item", "temp"], fallback={})
    assert list(filled["item"]) == ["A", "B", "A", "A", "B"]
    assert list(filled["temp"]) == [210.0, 200.0, 210.0, 210.0, 200.0]
    assert mask[:, 0].tolist() == [True, False, False, True, True]


def test_memory_seeds_gaps_and_is_updated() -> None:
    frame = pd.DataFrame({"facility": ["F7"], "timestamp": pd.to_datetime(["2026-01-01"]), "item": [None], "temp": [np.nan]})
    memory = {"F7": {"item": "Z", "temp": 190.0}}
    filled, mask = impute_state(frame, ["item", "temp"], fallback={}, memory=memory, backward=False)
    assert filled["item"].iloc[0] == "Z" and filled["temp"].iloc[0] == 190.0 and mask.all()
    impute_state(_frame(), ["item", "temp"], fallback={}, memory=memory)
    assert memory["F1"] == {"item": "A", "temp": 210.0}


def test_fallback_when_nothing_is_known() -> None:
    frame = pd.DataFrame({"facility": ["F1"], "timestamp": pd.to_datetime(["2026-01-01"]), "temp": [np.nan]})
    filled, mask = impute_state(frame, ["temp"], fallback={"temp": 5.0})
    assert filled["temp"].iloc[0] == 5.0 and mask[0, 0]


def test_fill_with_means() -> None:
    x = np.array([[1.0, np.nan], [np.nan, 4.0]])
    filled, mask = fill_with_means(x, np.array([10.0, 20.0]))
    assert filled.tolist() == [[1.0, 20.0], [10.0, 4.0]] and mask.tolist() == [[False, True], [True, False]]
