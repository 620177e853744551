"""Simulated records as the documents a machine (or MES) inserts into MongoDB."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd


def as_documents(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One document per row: the maker's own fields only (no NaN), timestamps as datetimes."""
    documents = []
    for row in frame.to_dict("records"):
        doc: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if hasattr(value, "to_pydatetime"):
                value = value.to_pydatetime()
            doc[key] = value
        documents.append(doc)
    return documents
