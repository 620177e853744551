"""Training on a bounded history (model_store/history_sample.py): which lots are kept, hand-computed
at the cap and around it, over whole spaces of lot tables (hypothesis), and the two-pass read of a
real export in pieces, equal to the same lots of a whole read."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_records
from model_store.errors import DataError
from model_store.history_sample import MIN_LOTS_PER_PART, choose_lots, lot_order_key, lot_text, read_history
from model_store.loaders import read_table


def _lots(parts: dict[tuple[str, str], list[int]]) -> pd.DataFrame:
    rows = [{"maker": "M", "facility": f, "item": i, "lot_date": f"2026-01-{d + 1:02d}", "rows": n}
            for (f, i), sizes in parts.items() for d, n in enumerate(sizes)]
    return pd.DataFrame(rows)


def _per_part(chosen: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {(str(f), str(i)): int(n) for (f, i), n in chosen.groupby(["facility", "item"]).size().items()}


def test_hand_computed_a_floor_above_the_cap_drops_to_one_lot_and_the_share_is_the_largest_that_fits() -> None:
    # A: 4 lots of 10 rows, B: 2 lots of 5 (50 rows). Cap 30: the floor of 3 lots keeps A 30 + B 10 = 40 > 30,
    # so the floor is 1; share 0.5 keeps ceil(2) A lots + ceil(1) B lot = 25 rows; any larger share keeps
    # 3 A lots and 2 B lots = 40.
    lots = _lots({("A", "x"): [10, 10, 10, 10], ("B", "y"): [5, 5]})
    chosen, floor = choose_lots(lots, 30)
    assert floor == 1 and int(chosen["rows"].sum()) == 25 and _per_part(chosen) == {("A", "x"): 2, ("B", "y"): 1}
    # the kept lots are each part's first in hash order
    for (f, i), n in _per_part(chosen).items():
        mine = lots[(lots["facility"] == f) & (lots["item"] == i)]
        first = mine.iloc[np.argsort(lot_order_key(mine), kind="stable")[:n]]["lot_date"].tolist()
        assert sorted(chosen[(chosen["facility"] == f)]["lot_date"]) == sorted(first)


def test_the_cap_equal_to_the_history_keeps_everything_and_one_row_less_samples() -> None:
    lots = _lots({("A", "x"): [10, 10, 10, 10], ("B", "y"): [5, 5]})
    everything, _ = choose_lots(lots, 50)
    assert len(everything) == 6
    less, floor = choose_lots(lots, 49)
    # floor 3: A keeps 3 (30), B both (10): 40 <= 49; share > 0.75 would keep all 4 A lots (50)
    assert floor == MIN_LOTS_PER_PART == 3 and int(less["rows"].sum()) == 40 and _per_part(less) == {("A", "x"): 3, ("B", "y"): 2}


def test_when_one_lot_per_part_is_above_the_cap_each_part_keeps_one() -> None:
    lots = _lots({("A", "x"): [10, 10], ("B", "y"): [10, 10], ("C", "z"): [10]})
    chosen, floor = choose_lots(lots, 5)
    assert floor == 1 and _per_part(chosen) == {("A", "x"): 1, ("B", "y"): 1, ("C", "z"): 1}
    with pytest.raises(ValueError, match="max_rows"):
        choose_lots(lots, 0)


lot_tables = st.dictionaries(
    st.tuples(st.sampled_from(["F1", "F2", "F3", "F4"]), st.sampled_from(["a", "b", "c"])),
    st.lists(st.integers(1, 500), min_size=1, max_size=30), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(lot_tables, st.integers(1, 20_000))
def test_the_sample_stays_within_the_cap_and_every_part_keeps_its_share(parts, max_rows: int) -> None:
    lots = _lots(parts)
    chosen, floor = choose_lots(lots, max_rows)
    assert chosen.equals(choose_lots(lots.sample(frac=1.0, random_state=1), max_rows)[0])  # order of the input: no matter
    kept = _per_part(chosen)
    total = int(lots["rows"].sum())
    if total <= max_rows:
        assert len(chosen) == len(lots)
        return
    assert set(kept) == set(parts)  # no part is left out
    for key, sizes in parts.items():
        assert min(floor, len(sizes)) <= kept[key] <= len(sizes)
    floor_rows = int(sum(sorted(zip(lot_order_key(g), g["rows"]))[0][1] for _, g in lots.groupby(["facility", "item"])))
    if floor_rows <= max_rows:
        assert int(chosen["rows"].sum()) <= max_rows
    # one share for all: no part keeps more than ceil(share * its lots) where another is above its floor
    shares = [(kept[k] - 1) / len(v) for k, v in parts.items() if kept[k] > min(floor, len(v))]
    if shares:
        assert all(kept[k] >= np.ceil(max(shares) * len(v) - 1e-9) or kept[k] == len(v) for k, v in parts.items())


# -- the two-pass read of an export -------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(small_plant, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "records.csv"
    small_plant.records.head(30_000).to_csv(path, index=False)  # five pieces of 7,001 rows
    return path


def test_a_history_above_the_cap_is_the_chosen_lots_of_a_whole_read_however_it_is_cut(small_plant, export) -> None:
    whole = canonical_records(read_table(str(export)), small_plant.schema)
    frame, sample = read_history(export, None, small_plant.schema, 12_000, piece_rows=7_001)
    assert sample.sampled and sample.rows == len(whole) and sample.kept_rows == len(frame) <= 12_000
    wanted = set(lot_text(frame))
    expected = whole[np.array([k in wanted for k in lot_text(whole)])].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)
    assert sample.lots == whole.groupby(["maker", "facility", "item", "lot_date"], dropna=False).ngroups
    again, _ = read_history(export, None, small_plant.schema, 12_000, piece_rows=50_000)
    pd.testing.assert_frame_equal(again, frame)  # the same lots whatever the pieces


def test_a_history_within_the_cap_or_without_one_is_read_whole(small_plant, export) -> None:
    whole = canonical_records(read_table(str(export)), small_plant.schema)
    for cap in (len(whole), 0):
        frame, sample = read_history(export, None, small_plant.schema, cap)
        assert not sample.sampled and sample.kept_rows == len(whole)
        pd.testing.assert_frame_equal(frame, whole)
    with pytest.raises(DataError, match="--max-rows"):
        read_history(export, None, small_plant.schema, -1)


def test_a_bad_row_in_a_later_piece_is_named_by_its_row_in_the_file(small_plant, export, tmp_path) -> None:
    frame = pd.read_csv(export).astype({"timestamp": object})
    frame.loc[15_000, "timestamp"] = "not a time"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"column 'timestamp' must hold timestamps; row 15001 \(value 'not a time'\)"):
        read_history(bad, None, small_plant.schema, 12_000, piece_rows=7_001)


def test_text_in_a_production_field_of_a_kept_row_is_named_by_its_row_in_the_file(small_plant, export, tmp_path) -> None:
    kept, _ = read_history(export, None, small_plant.schema, 12_000, piece_rows=7_001)
    frame = pd.read_csv(export)
    field = next(f for f in small_plant.schema.numeric_fields if f in frame.columns and kept[f].notna().iloc[-1])
    position = int(np.flatnonzero(frame[small_plant.schema.record_id].astype(str).to_numpy() == str(kept["record_id"].iloc[-1]))[0])
    frame = frame.astype({field: object})
    frame.loc[position, field] = "hot"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=rf"column '{field}' must be numeric; row {position + 1} \(value 'hot'\)"):
        read_history(bad, None, small_plant.schema, 12_000, piece_rows=7_001)


def test_the_cli_default_is_the_modules() -> None:
    import inspect

    from model_store.history_sample import DEFAULT_MAX_ROWS
    from service.cli import train

    assert inspect.signature(train).parameters["max_rows"].default.default == DEFAULT_MAX_ROWS == 400_000


def test_the_line_says_what_was_kept_and_when_the_cap_could_not_hold() -> None:
    from model_store.history_sample import HistorySample

    within = HistorySample(rows=9_999_512, lots=14_133, kept_rows=399_000, kept_lots=900, max_rows=400_000, min_lots=3)
    assert within.describe() == ("The history holds 9,999,512 records, more than --max-rows 400,000: training on the "
                                 "399,000 shots of 900 of its 14,133 lots (whole lots, the same share of every part's "
                                 "days, at least 3 a part; the same lots every run).")
    at_cap = HistorySample(9_999_512, 14_133, 400_000, 900, 400_000, 3)
    assert "above the cap" not in at_cap.describe()
    thinned = HistorySample(9_999_512, 14_133, 400_112, 476, 400_000, 1, 400_000 / 444_349)
    assert thinned.describe().endswith("at least 1 a part; the same lots every run). One lot of each of the history's "
                                       "parts is already more than the cap, so 90.0% of each kept lot's shots are kept "
                                       "(by a hash of the record id).")
    assert thinned.to_json()["shot_share"] == 400_000 / 444_349 and within.to_json()["shot_share"] == 1.0


def test_when_one_lot_per_part_is_above_the_cap_the_same_share_of_each_lots_shots_is_kept() -> None:
    from model_store.history_sample import shot_kept, shot_share

    lots = _lots({("A", "x"): [10, 10], ("B", "y"): [30, 10], ("C", "z"): [10]})
    chosen, floor = choose_lots(lots, 20)
    assert floor == 1 and len(chosen) == 3  # one lot each: at least 30 rows, whatever lots
    assert shot_share(chosen, int(chosen["rows"].sum())) == 1.0  # equal to the cap: nothing thinned
    assert shot_share(chosen, 20) == 20 / int(chosen["rows"].sum())
    ids = [f"shot-{i}" for i in range(20_000)]
    kept = shot_kept(ids, 0.25)
    assert abs(kept.mean() - 0.25) < 0.01 and np.array_equal(kept, shot_kept(ids, 0.25))  # the same ones every run
    assert shot_kept(ids, 1.0).all() and not shot_kept(ids, 0.0).any()
    assert (shot_kept(ids, 0.5) >= kept).all()  # a larger share keeps a superset


def test_a_history_whose_parts_need_more_than_the_cap_is_thinned_to_about_the_cap(small_plant, export) -> None:
    whole = canonical_records(read_table(str(export)), small_plant.schema)
    cap = 3_000  # well below one lot of each part of the first 30,000 shots
    frame, sample = read_history(export, None, small_plant.schema, cap, piece_rows=7_001)
    assert sample.min_lots == 1 and sample.shot_share < 0.5
    assert abs(len(frame) - cap) < 0.1 * cap and sample.kept_rows == len(frame)
    # every part keeps its lot; a part loses all its shots only by chance, when that lot is tiny
    from model_store.history_sample import LOT_ROLE_KEYS

    parts = ["maker", "facility", "item"]
    chosen, _ = choose_lots(whole.groupby(LOT_ROLE_KEYS, dropna=False).size().rename("rows").reset_index(), cap)
    assert len(chosen) == whole.groupby(parts, dropna=False).ngroups == sample.kept_lots
    kept = {tuple(k) for k in frame[parts].astype(str).drop_duplicates().to_numpy()}
    lost = chosen[[tuple(k) not in kept for k in chosen[parts].astype(str).to_numpy()]]
    assert (lost["rows"] < 20).all(), lost
    again, _ = read_history(export, None, small_plant.schema, cap, piece_rows=50_000)
    pd.testing.assert_frame_equal(again, frame)
