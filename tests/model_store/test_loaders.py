"""Reading history in bounded pieces (model_store/loaders.py iter_table): every source, at most N
rows a piece, the same rows as the whole-frame read, clear errors naming the file and column."""
from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.errors import DataError
from model_store.loaders import _pieces, iter_table, read_postgres, read_table
from model_store.simulate import PlantStream, SimulationConfig, write_plant_dataset

SMALL = SimulationConfig(seed=7, days=4, facilities=6, items=10, shots=12_000)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plant")
    return write_plant_dataset(PlantStream(SMALL, chunk_shots=1_500), out, partition_by=("lot_date", "facility"))["records"]


def _frame(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"r{i:05d}" for i in range(n)], "value": rng.normal(size=n),
                         "when": pd.date_range("2026-01-05", periods=n, freq="s"), "facility": rng.choice(["F01", "F02"], n)})


def _check_pieces(pieces: list[pd.DataFrame], whole: pd.DataFrame, rows: int) -> None:
    assert all(0 < len(p) <= rows for p in pieces)
    assert all(len(p) == rows for p in pieces[:-1])  # re-cut to full pieces, only the last shorter
    assert len(pieces) == math.ceil(len(whole) / rows)
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole.reset_index(drop=True))


def test_a_partitioned_dataset_reads_in_pieces_in_path_order(dataset: Path) -> None:
    whole = read_table(dataset)
    assert len(whole) == sum(len(pq.read_table(p)) for p in dataset.rglob("*.parquet"))
    assert whole["lot_date"].is_monotonic_increasing  # day folders in date order
    assert str(whole["lot_date"].dtype) == "str"  # the files' type, not a partition dictionary (categorical)
    _check_pieces(list(iter_table(dataset, rows=2_500)), whole, 2_500)
    some = list(iter_table(dataset, rows=4_000, columns=["shot_id", "facility", "PV_OIL_TEMP"]))
    assert list(some[0].columns) == ["shot_id", "facility", "PV_OIL_TEMP"]
    pd.testing.assert_frame_equal(pd.concat(some, ignore_index=True), whole[["shot_id", "facility", "PV_OIL_TEMP"]])


def test_a_partition_key_only_in_the_folder_names_is_read_as_text(tmp_path: Path) -> None:
    frame = _frame()
    for day, sub in frame.groupby(frame["when"].dt.strftime("%Y-%m-%d")):
        (tmp_path / f"day={day}").mkdir()
        pq.write_table(pa.Table.from_pandas(sub.reset_index(drop=True), preserve_index=False), tmp_path / f"day={day}" / "part-0.parquet")
    pieces = list(iter_table(tmp_path, rows=300))
    got = pd.concat(pieces, ignore_index=True)
    assert list(got.columns) == [*frame.columns, "day"]
    assert (got["day"] == got["when"].dt.strftime("%Y-%m-%d")).all()
    pd.testing.assert_frame_equal(got[frame.columns], frame)


def test_a_corrupt_file_in_a_dataset_is_named(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "records"
    copy.mkdir()
    for p in dataset.rglob("*.parquet"):
        (copy / p.relative_to(dataset)).parent.mkdir(parents=True, exist_ok=True)
        (copy / p.relative_to(dataset)).write_bytes(p.read_bytes())
    victim = sorted(copy.rglob("*.parquet"))[3]
    victim.write_bytes(b"PAR1 this is not parquet at all PAR1")
    with pytest.raises(DataError, match=str(victim)):
        list(iter_table(copy, rows=1000))
    with pytest.raises(DataError, match=str(victim)):
        read_table(copy)
    truncated = sorted(copy.rglob("*.parquet"))[5]
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    victim.unlink()
    with pytest.raises(DataError, match=str(truncated)):
        list(iter_table(copy, rows=1000))
    first = sorted(copy.rglob("*.parquet"))[0]  # the file a dataset reads its schema from
    first.write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"{first}: not a readable Parquet file"):
        list(iter_table(copy, rows=1000))


def test_a_file_without_a_column_is_named_with_the_column(tmp_path: Path) -> None:
    frame = _frame()
    pq.write_table(pa.Table.from_pandas(frame.iloc[:500], preserve_index=False), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[500:].drop(columns=["value"]), preserve_index=False), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 'b.parquet'}: missing column 'value'"):
        list(iter_table(tmp_path, rows=100))
    with pytest.raises(DataError, match=rf"{tmp_path / 'b.parquet'}: missing column 'value'"):
        list(iter_table(tmp_path / "b.parquet", columns=["id", "value"]))
    assert sum(len(p) for p in iter_table(tmp_path, rows=100, columns=["id", "when"])) == 1000  # what both files have


def test_a_parquet_file_reads_in_row_group_batches(tmp_path: Path) -> None:
    frame = _frame(2_345)
    path = tmp_path / "records.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=1000)
    pieces = list(iter_table(path, rows=400))
    assert all(0 < len(p) <= 400 for p in pieces)
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), frame)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=rf"{bad}: not a readable Parquet file"):
        list(iter_table(bad))


def test_csv_reads_in_chunks(tmp_path: Path) -> None:
    frame = _frame(1_234)
    path = tmp_path / "records.csv.gz"
    frame.to_csv(path, index=False)
    whole = read_table(path)
    _check_pieces(list(iter_table(path, rows=500)), whole, 500)
    with pytest.raises(DataError, match=rf"{path}: missing column 'nope'"):
        list(iter_table(path, columns=["id", "nope"]))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        list(iter_table(empty))
    header = tmp_path / "header.csv"
    header.write_text("id,value\n")
    with pytest.raises(DataError, match="no rows"):
        list(iter_table(header))


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        list(iter_table(tmp_path / "nope.parquet"))
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_table(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="at least 1"):
        list(iter_table(tmp_path / "x.txt", rows=0))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=12), rows=st.integers(1, 50))
def test_pieces_are_full_and_keep_every_row_in_order(sizes: list[int], rows: int) -> None:
    start, batches = 0, []
    for n in sizes:
        batches.append(pa.record_batch({"k": pa.array(np.arange(start, start + n), pa.int64())}))
        start += n
    pieces = list(_pieces(batches, rows))
    assert all(len(p) == rows for p in pieces[:-1]) and all(0 < len(p) <= rows for p in pieces)
    got = np.concatenate([p["k"].to_numpy() for p in pieces]) if pieces else np.array([], dtype=np.int64)
    assert (got == np.arange(start)).all()


@pytest.mark.servers
def test_postgres_reads_through_a_server_side_cursor(postgres_server) -> None:
    import psycopg

    table = f"shots_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, facility text, pressure numeric(8, 2), at timestamp)")
        conn.execute(f"INSERT INTO {table} SELECT g, 'F0' || (g % 3), (g % 1000) / 10.0, "
                     f"timestamp '2026-01-05' + g * interval '1 second' FROM generate_series(1, 25000) g")
        pieces = iter_table(postgres_server.dsn, f"SELECT * FROM {table} ORDER BY id", rows=4_000)
        first = next(pieces)
        # While the reader holds one piece, its session sits on the cursor, fetching piece by piece.
        activity = conn.execute("SELECT query FROM pg_stat_activity WHERE query LIKE 'FETCH%moldwatch_history%'").fetchall()
        assert activity, "no server-side cursor fetch in progress"
        got = pd.concat([first, *pieces], ignore_index=True)
    assert len(first) == 4_000 and len(got) == 25_000
    assert got["pressure"].dtype == float
    whole = read_postgres(postgres_server.dsn, f"SELECT * FROM {table} ORDER BY id")
    pd.testing.assert_frame_equal(got, whole, check_dtype=False)
    with pytest.raises(DataError, match="no rows"):
        list(iter_table(postgres_server.dsn, f"SELECT * FROM {table} WHERE id < 0"))
    with pytest.raises(DataError, match="does not exist"):
        list(iter_table(postgres_server.dsn, "nope_table"))
