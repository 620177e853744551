"""Read a records or lots table from CSV, Parquet or PostgreSQL: into one DataFrame
(:func:`read_table`), or in bounded pieces (:func:`iter_table`).

Pieces: an iterator of DataFrames of at most ``rows`` rows each (``PIECE_ROWS`` by default), so a
history larger than memory can be read through: a Parquet dataset folder (hive ``key=value``
partitions, as ``moldwatch simulate --format parquet-dataset`` writes) file by file and batch by
batch, a single Parquet file row group by row group, CSV in chunks, PostgreSQL through a
server-side cursor. A file that cannot be read is named with its path; a file without a column
that is asked for (or that the dataset's other files have) is named with the column.

The caller canonicalises with :mod:`model_store.schema`; this module only moves bytes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from model_store.errors import DataError

if TYPE_CHECKING:  # pyarrow is the train extra's; the serving install reads CSV only
    import pyarrow as pa
    import pyarrow.dataset as pads

PIECE_ROWS = 200_000  # rows per piece: ~0.2 GB for a 70-column export in pandas (about 1 kB a row with its strings)
NUMERIC_OID = 1700  # PostgreSQL NUMERIC: arrives as Decimal, read as float

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def is_postgres(source: str) -> bool:
    return str(source).startswith(("postgresql://", "postgres://"))


def json_hint(path: Path | str) -> str:
    """For JSON records, the way in that exists: ``score --records -`` reads them on stdin."""
    return f" (JSON records: moldwatch score --records - < {path})" if str(path).lower().endswith((".json", ".jsonl")) else ""


def read_table(source: str | Path, query: str | None = None) -> pd.DataFrame:
    """``source``: a .csv/.csv.gz/.parquet file, a directory of Parquet files, or a PostgreSQL URI.

    For PostgreSQL, ``query`` is a table name (``schema.table``) or a ``SELECT`` statement.
    """
    if is_postgres(str(source)):
        return read_postgres(str(source), query)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        frame = _dataset_frame(path)
        if frame.empty:
            raise DataError(f"{path}: no rows")
        return frame
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(path, low_memory=False)
        else:
            raise DataError(f"{path}: unsupported file type; use .csv, .csv.gz, .parquet or a PostgreSQL URI{json_hint(path)}")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and records") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read it ({exc})".splitlines()[0]) from None
    if frame.empty:
        raise DataError(f"{path}: no rows")
    return frame


def read_postgres(dsn: str, query: str | None) -> pd.DataFrame:
    import psycopg

    statement = _statement(dsn, query)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute(statement)
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchall()
    except psycopg.Error as exc:
        raise DataError(f"{_redact(dsn)}: {str(exc).strip().splitlines()[0]}") from None
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        raise DataError(f"{_redact(dsn)} ({query}): no rows")
    for column in frame.columns:
        sample = frame[column].dropna()
        # NUMERIC columns arrive as Decimal: make them floats so the models see numbers.
        if frame[column].dtype == object and len(sample) and isinstance(sample.iloc[0], Decimal):
            frame[column] = frame[column].astype(float)
    return frame


def _statement(dsn: str, query: str | None) -> object:
    from psycopg import sql

    if not query:
        raise DataError(f"{_redact(dsn)}: name a table or a SELECT with the matching --*-query option")
    return (
        sql.SQL("SELECT * FROM {}").format(sql.Identifier(*query.split(".")))
        if _IDENTIFIER.match(query)
        else sql.SQL(query)  # a user-supplied SELECT: the operator's own database, run as given
    )


# --- pieces ------------------------------------------------------------------------------------


def iter_table(
    source: str | Path, query: str | None = None, rows: int = PIECE_ROWS, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """``source`` (as :func:`read_table`) in pieces of at most ``rows`` rows, in storage order.

    ``columns``: read only these (each must be in every file; PostgreSQL: select them in the
    query). Raises :class:`DataError` naming the file (and the column) that cannot be read, and
    when the source holds no row at all.
    """
    if rows < 1:
        raise DataError(f"rows per piece must be at least 1, got {rows}")
    if is_postgres(str(source)):
        pieces: Iterable[pd.DataFrame] = iter_postgres(str(source), query, rows)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: file not found")
        suffixes = "".join(path.suffixes[-2:]).lower()
        if path.is_dir():
            pieces = iter_dataset(path, rows, columns)
        elif path.suffix.lower() in (".parquet", ".pq"):
            pieces = iter_parquet_file(path, rows, columns)
        elif suffixes.endswith((".csv", ".csv.gz")):
            pieces = iter_csv(path, rows, columns)
        else:
            raise DataError(f"{path}: unsupported file type; use .csv, .csv.gz, .parquet, a folder of Parquet files or a "
                            f"PostgreSQL URI{json_hint(path)}")
    empty = True
    for piece in pieces:
        if len(piece):
            empty = False
            yield piece
    if empty:
        raise DataError(f"{_redact(str(source))}: no rows")


def open_dataset(path: Path) -> pads.FileSystemDataset:
    """A folder of Parquet files, hive partitions (``key=value`` folders) read as columns.

    A partition key that is also a column of the files (as the simulator writes them) keeps the
    files' type; any other key is read as text.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        plain = pads.dataset(path, format="parquet")
        keys: dict[str, None] = {}
        for file in plain.files:
            for part in Path(file).relative_to(path).parts[:-1]:
                key, sep, _ = part.partition("=")
                if sep:
                    keys.setdefault(key)
        if not keys:
            return plain
        names = plain.schema.names
        fields = [pa.field(k, plain.schema.field(k).type if k in names else pa.string()) for k in keys]
        return pads.dataset(path, format="parquet", partitioning=pads.partitioning(pa.schema(fields), flavor="hive"))
    except (OSError, ValueError, pa.ArrowException) as exc:
        _name_unreadable_file(path)
        raise DataError(f"{path}: cannot read it as a Parquet dataset ({_first_line(exc)})") from None


def _name_unreadable_file(path: Path) -> None:
    """Raise naming the first Parquet file under ``path`` whose footer cannot be read, if any."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))):
        try:
            pq.read_schema(file)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None


def iter_dataset(path: Path, rows: int = PIECE_ROWS, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """A Parquet dataset folder file by file (in path order, so day partitions come in date
    order), each file in batches, re-cut into pieces of at most ``rows`` rows."""
    dataset = open_dataset(path)
    yield from _pieces(_dataset_batches(dataset, path, columns), rows)


def _dataset_batches(dataset: pads.FileSystemDataset, root: Path, columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    wanted = list(columns) if columns is not None else dataset.schema.names
    partition_keys = set(dataset.partitioning.schema.names) if dataset.partitioning is not None else set()
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        try:
            physical = fragment.physical_schema.names
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{fragment.path}: not a readable Parquet file ({_first_line(exc)})") from None
        missing = [c for c in wanted if c not in physical and c not in partition_keys]
        if missing:
            raise DataError(f"{fragment.path}: missing column {missing[0]!r} (the dataset {root} has it)")
        try:
            yield from fragment.to_batches(schema=dataset.schema, columns=wanted)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{fragment.path}: cannot read it ({_first_line(exc)})") from None


def _dataset_frame(path: Path) -> pd.DataFrame:
    """A whole dataset folder in one frame (for :func:`read_table`), with the same file checks."""
    import pyarrow as pa

    dataset = open_dataset(path)
    batches = list(_dataset_batches(dataset, path, None))
    return pa.Table.from_batches(batches, schema=dataset.schema).to_pandas()


def iter_parquet_file(path: Path, rows: int = PIECE_ROWS, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """One Parquet file in batches of at most ``rows`` rows (row group by row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    missing = [c for c in columns or () if c not in file.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}")
    try:
        for batch in file.iter_batches(batch_size=rows, columns=list(columns) if columns is not None else None):
            yield batch.to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read it ({_first_line(exc)})") from None


def column_names(source: str | Path) -> list[str] | None:
    """The columns a file or dataset folder holds, read from its header or footer (no rows);
    None for PostgreSQL (a query's columns are known when it runs). Unreadable: DataError."""
    if is_postgres(str(source)):
        return None
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return list(open_dataset(path).schema.names)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and records") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it ({_first_line(exc)})") from None


def iter_csv(path: Path, rows: int = PIECE_ROWS, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """A CSV file (or .csv.gz) in chunks of at most ``rows`` rows."""
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in columns or () if c not in header]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r}")
        with pd.read_csv(path, chunksize=rows, usecols=list(columns) if columns is not None else None, low_memory=False) as reader:
            yield from reader
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and records") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read it ({_first_line(exc)})") from None


def iter_postgres(dsn: str, query: str | None, rows: int = PIECE_ROWS) -> Iterator[pd.DataFrame]:
    """A table or SELECT through a server-side (named) cursor: the server holds the result and
    sends ``rows`` rows per fetch, so the client never holds more than one piece."""
    import psycopg

    statement = _statement(dsn, query)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor(name="moldwatch_history") as cur:
            cur.itersize = rows
            cur.execute(statement)
            names = [d.name for d in cur.description or []]
            numeric = [d.name for d in cur.description or [] if d.type_code == NUMERIC_OID]
            while batch := cur.fetchmany(rows):
                frame = pd.DataFrame(batch, columns=names)
                for column in numeric:  # Decimal -> float, in every piece (not inferred per piece)
                    frame[column] = frame[column].astype(float)
                yield frame
    except psycopg.Error as exc:
        raise DataError(f"{_redact(dsn)}: {str(exc).strip().splitlines()[0]}") from None


def _pieces(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pd.DataFrame]:
    """Record batches re-cut into frames of exactly ``rows`` rows (the last one shorter)."""
    import pyarrow as pa

    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while len(batch):
            take = min(rows - count, len(batch))
            held.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.Table.from_batches(held).to_pandas()
                held, count = [], 0
    if count:
        yield pa.Table.from_batches(held).to_pandas()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _redact(dsn: str) -> str:
    """A DSN without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
