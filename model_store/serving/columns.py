"""Canonical records as NumPy columns: what the decoder produces and the scoring core reads.

A pandas frame costs tens of microseconds per column read and milliseconds to build, more than
scoring a small batch; the stream's hot path therefore hands columns from the mapping to the
scoring core and to the verdicts without a frame. Offline callers that hold a frame (training,
``moldwatch score``) wrap it, and its columns are converted once, when first read.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd


class RecordColumns(Mapping[str, np.ndarray]):
    """Columns of equal length by canonical name; a frame is built only when asked for."""

    def __init__(self, columns: Mapping[str, np.ndarray], length: int | None = None):
        self._columns = dict(columns)
        lengths = {len(v) for v in self._columns.values()}
        if length is None:
            length = lengths.pop() if lengths else 0
            if lengths:
                raise ValueError(f"record columns of different lengths: {sorted({length, *lengths})}")
        elif lengths - {length}:
            raise ValueError(f"record columns of lengths {sorted(lengths)}, expected {length}")
        self._length = int(length)
        self._frame: pd.DataFrame | None = None

    @classmethod
    def of(cls, records: pd.DataFrame | RecordColumns) -> RecordColumns:
        """Columns of a frame (each converted when first read), or the columns themselves."""
        return records if isinstance(records, RecordColumns) else FrameColumns(records)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    @property
    def rows(self) -> int:
        return self._length

    def take(self, rows: np.ndarray | list[int]) -> RecordColumns:
        index = np.asarray(rows, dtype=np.int64)
        return RecordColumns({name: self[name][index] for name in self}, len(index))

    @property
    def frame(self) -> pd.DataFrame:
        """The records as a frame with a RangeIndex (built on first use, then kept)."""
        if self._frame is None:
            # object columns stay object (pandas would infer a string dtype and turn None into NaN)
            frame = pd.DataFrame({name: pd.Series(v, dtype=object) if (v := self[name]).dtype == object else v for name in self})
            frame.index = pd.RangeIndex(self._length)
            self._frame = frame
        return self._frame

    @classmethod
    def concat(cls, parts: list[RecordColumns], empty: RecordColumns) -> RecordColumns:
        """Rows of ``parts`` one after the other (``empty`` gives the columns when there are none)."""
        if not parts:
            return empty
        return cls({name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, sum(p.rows for p in parts))


class FrameColumns(RecordColumns):
    """A frame's columns, each converted to NumPy when first read."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__({}, len(frame))
        self._source = frame.reset_index(drop=True)
        self._names = [str(c) for c in self._source.columns]
        self._frame = self._source

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._columns:
            if name not in self._names:
                raise KeyError(name)
            self._columns[name] = self._source[name].to_numpy()
        return self._columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


__all__ = ["RecordColumns", "FrameColumns"]
