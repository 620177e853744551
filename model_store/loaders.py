"""Read a records or lots table from CSV, Parquet or PostgreSQL into one DataFrame.

The caller canonicalises with :mod:`model_store.schema`; this module only moves bytes.
"""
from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pandas as pd

from model_store.errors import DataError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def is_postgres(source: str) -> bool:
    return str(source).startswith(("postgresql://", "postgres://"))


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
    try:
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(path, low_memory=False)
        else:
            raise DataError(f"{path}: unsupported file type; use .csv, .csv.gz, .parquet or a PostgreSQL URI")
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
    from psycopg import sql

    if not query:
        raise DataError(f"{_redact(dsn)}: name a table or a SELECT with the matching --*-query option")
    statement = (
        sql.SQL("SELECT * FROM {}").format(sql.Identifier(*query.split(".")))
        if _IDENTIFIER.match(query)
        else sql.SQL(query)  # a user-supplied SELECT: the operator's own database, run as given
    )
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


def _redact(dsn: str) -> str:
    """A DSN without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
