"""Decode and validate raw production documents into canonical rows, or say why not.

The rules are :mod:`model_store.mapping`'s — the one mapping from a plant's records to canonical
columns that the offline loader (:func:`model_store.canonical.canonical_records`) uses too. This
module adds what only a stream needs: :meth:`RecordDecoder.decode_batch` maps a micro-batch of
documents into the canonical frame in one vectorised pass and turns every document that cannot be
scored into a :class:`DeadLetter` with a reason from a small fixed vocabulary (it is a metric
label) and a one-line error naming the plant's own field, for the person who reads the
dead-letter topic. Nothing here raises: one bad document never stops the others.

MongoDB specifics: ``ObjectId`` ids become their hex string, BSON dates (tz-aware or naive UTC)
are normalised to naive UTC like the offline path, ``Decimal128``/``Int64`` are numbers.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from model_store.mapping import (
    INVALID_FIELD,
    MAX_NAME_LENGTH,
    MISSING_FIELD,
    NOT_A_DOCUMENT,
    UNKNOWN_MAKER,
    FieldError,
    canonical_columns,
    map_documents,
    short_repr,
)
from model_store.schema import TIMESTAMP, PlantSchema
from model_store.serving.columns import RecordColumns

# Dead letters and their reasons: the contract is service/dead_letter.py (re-exported here, where
# records become them).
from service.dead_letter import (
    MESSAGE_TOO_LARGE,
    REASONS,
    REJECTED_BY_BROKER,
    SCORING_FAILED,
    SERIALIZATION_FAILED,
    UNDECODABLE,
    DeadLetter,
)


@dataclass(frozen=True)
class CanonicalRecord:
    """One valid record: canonical columns (see ``model_store.schema``) and its time in epoch seconds."""

    row: dict[str, Any]
    record_time: float


@dataclass
class DecodedBatch:
    """A micro-batch decoded: the canonical frame of the documents that map (in input order),
    each one's input position (``rows``) and time in epoch seconds, and a dead letter for every
    other input position."""

    records: RecordColumns
    rows: list[int]
    record_time: list[float]
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)

    @property
    def frame(self) -> pd.DataFrame:
        return self.records.frame


def refusal_text(errors: list[FieldError]) -> tuple[str, str]:
    """The reason and one-line error of a refused document: its first refusal, then a count."""
    first = errors[0]
    more = len(errors) - 1
    return first.reason, first.text + (f"; and {more} more error{'s' if more > 1 else ''}" if more else "")


class RecordDecoder:
    """Turns raw documents of one plant into canonical rows. Thread-safe (no mutable state)."""

    def __init__(self, schema: PlantSchema) -> None:
        self.schema = schema
        self.numeric_fields = schema.numeric_fields
        self.columns = canonical_columns(schema)  # column order of the canonical frame

    def decode_batch(self, documents: Sequence[Any]) -> DecodedBatch:
        """Decode a micro-batch. Never raises: a document that cannot be scored is a dead letter
        and the rest of the batch proceeds."""
        letters: dict[int, DeadLetter] = {}
        plain: list[dict[str, Any]] = []
        positions: list[int] = []
        for i, document in enumerate(documents):
            if type(document) is dict:
                plain.append(document)
                positions.append(i)
            elif not isinstance(document, Mapping):
                letters[i] = DeadLetter(NOT_A_DOCUMENT, f"expected a JSON object / BSON document, got {type(document).__name__}",
                                        document)
            else:
                try:
                    plain.append(dict(document))
                    positions.append(i)
                except Exception as exc:  # noqa: BLE001 - the contract: one bad record never stops the stream
                    letters[i] = _undecodable(exc, document)
        try:
            mapped = map_documents(plain, self.schema)
        except Exception:  # noqa: BLE001 - isolate the document the batch tripped on
            return self._one_by_one(documents, plain, positions, letters)
        for k, errors in mapped.errors.items():
            reason, text = refusal_text(errors)
            letters[positions[k]] = DeadLetter(reason, text, documents[positions[k]])
        rows = [positions[k] for k in mapped.rows.tolist()]
        return DecodedBatch(mapped.records, rows, mapped.record_time, letters)

    def _one_by_one(self, documents: Sequence[Any], plain: list[dict[str, Any]], positions: list[int],
                    letters: dict[int, DeadLetter]) -> DecodedBatch:
        parts: list[RecordColumns] = []
        rows: list[int] = []
        times: list[float] = []
        for document, i in zip(plain, positions):
            try:
                mapped = map_documents([document], self.schema)
            except Exception as exc:  # noqa: BLE001 - this document is the offender
                letters[i] = _undecodable(exc, documents[i])
                continue
            if mapped.errors:
                reason, text = refusal_text(mapped.errors[0])
                letters[i] = DeadLetter(reason, text, documents[i])
                continue
            parts.append(mapped.records)
            rows.append(i)
            times.extend(mapped.record_time)
        records = RecordColumns.concat(parts, map_documents([], self.schema).records)
        return DecodedBatch(records, rows, times, letters)

    def decode(self, document: Any) -> CanonicalRecord | DeadLetter:
        """One document: a canonical record, or a dead letter with the reason. Never raises."""
        batch = self.decode_batch([document])
        if batch.dead_letters:
            return batch.dead_letters[0]
        row = {column: _python(batch.records[column][0]) for column in self.columns}
        row[TIMESTAMP] = pd.Timestamp(batch.records[TIMESTAMP][0]).to_pydatetime()
        return CanonicalRecord(row, batch.record_time[0])


MAX_UNKNOWN_FIELDS = 100  # names reported per decoder: a hostile source cannot flood the logs


class UnknownFields:
    """Record field names the plant schema does not know, each reported once.

    A typo in a production field's name (``cushon``) is silently a gap: the field it meant is
    imputed and the typo ignored. This says so once per name, with the schema field it resembles,
    so that the plant fixes its export or its schema. Extra fields are common and harmless (they
    are ignored); at most :data:`MAX_UNKNOWN_FIELDS` names are reported.
    """

    def __init__(self, schema: PlantSchema) -> None:
        roles = (schema.record_id, schema.timestamp, schema.facility, schema.item, schema.maker_column, schema.lot_date,
                 schema.label)
        self.fields = schema.numeric_fields
        self.known = frozenset(self.fields) | {r for r in roles if r} | {"_id"}
        self._lower = {name.lower(): name for name in self.fields}
        self.reported: set[str] = set()

    def observe(self, documents: Sequence[Any]) -> list[tuple[str, str | None]]:
        """``(name, the schema field it resembles or None)`` for each name first seen in ``documents``."""
        room = MAX_UNKNOWN_FIELDS - len(self.reported)
        if room <= 0:
            return []
        keys: set[Any] = set()
        for document in documents:
            if isinstance(document, Mapping):
                keys.update(document.keys())
        new = [k for k in keys - self.known - self.reported if isinstance(k, str)]
        found = []
        for name in sorted(new)[:room]:
            self.reported.add(name)
            found.append((name, self.resembles(name)))
        return found

    def resembles(self, name: str) -> str | None:
        if name.lower() in self._lower:
            return self._lower[name.lower()]
        close = difflib.get_close_matches(name, self.fields, n=1, cutoff=0.8)
        return close[0] if close else None


def unknown_field_text(name: str, resembles: str | None) -> str:
    hint = f" (did you mean {resembles!r}? a record without it has it imputed)" if resembles else " (ignored)"
    return f"field {short_repr(name)} is not in the plant schema{hint}"


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _undecodable(exc: BaseException, document: Any) -> DeadLetter:
    return DeadLetter(UNDECODABLE, f"{type(exc).__name__}: {short_repr(str(exc))}", document)


__all__ = ["RecordDecoder", "DecodedBatch", "CanonicalRecord", "DeadLetter", "REASONS", "short_repr", "MAX_NAME_LENGTH",
           "MESSAGE_TOO_LARGE", "SERIALIZATION_FAILED", "REJECTED_BY_BROKER", "refusal_text",
           "NOT_A_DOCUMENT", "MISSING_FIELD", "INVALID_FIELD", "UNKNOWN_MAKER", "UNDECODABLE", "SCORING_FAILED"]
