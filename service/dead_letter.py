"""The dead letter: what the worker publishes for a record that gets no verdict, typed and versioned.

A record that cannot be judged (:class:`DeadLetter`: why, the details, the original) becomes one
message on the dead-letter topic (:class:`DeadLetterMessage`): the reason, the error, which
worker and store version, when, the original's full size and sha256 (to find it in MongoDB or the
raw topic), whether the quote of it is truncated, where it was read, and the quote itself.
The writer is :func:`service.sink.dead_letter_value` (:meth:`DeadLetterMessage.to_bytes`); a
consumer reads one with :meth:`DeadLetterMessage.from_bytes`, which refuses another
``dead_letter_version`` by name and a field missing or of the wrong type naming the field.

Version 1 added ``dead_letter_version`` to the fields dead letters always had.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_store.mapping import INVALID_FIELD, MISSING_FIELD, NOT_A_DOCUMENT, UNKNOWN_MAKER

DEAD_LETTER_VERSION = 1
MAX_ERROR_CHARS = 2000  # the error text is cut here: a dead letter stays well below the broker's limit

# Reasons (a bounded vocabulary: each is a label of moldwatch_dead_letters_total).
# NOT_A_DOCUMENT, MISSING_FIELD, INVALID_FIELD, UNKNOWN_MAKER: the mapping's (model_store.mapping).
UNDECODABLE = "undecodable"  # bytes that are not JSON, or a failure nobody anticipated
SCORING_FAILED = "scoring_failed"  # valid record that the scoring core raised on
# Permanent send failures (service/sink.py): the broker will never accept the message as it is.
MESSAGE_TOO_LARGE = "message_too_large"  # the verdict exceeds the Kafka message limit
SERIALIZATION_FAILED = "serialization_failed"  # the verdict could not be written as JSON
REJECTED_BY_BROKER = "rejected_by_broker"  # the broker refused the record itself (corrupt, invalid)
REASONS = (NOT_A_DOCUMENT, MISSING_FIELD, INVALID_FIELD, UNKNOWN_MAKER, UNDECODABLE, SCORING_FAILED,
           MESSAGE_TOO_LARGE, SERIALIZATION_FAILED, REJECTED_BY_BROKER)
# Operator feedback refused (service/feedback.py): the same topic, a vocabulary of its own
# (moldwatch_feedback_refused_total{reason}).
FEEDBACK_REASONS: tuple[str, ...] = ("feedback_invalid", "feedback_duplicate", "feedback_unknown_record",
                                     "feedback_late", "feedback_from_the_future")


class DeadLetterFormatError(ValueError):
    """A dead-letter message that is not of this version's format (one line naming the field)."""


@dataclass(frozen=True)
class DeadLetter:
    """A record that gets no verdict: why (``reason``), the details (``error``) and the original."""

    reason: str
    error: str
    document: Any


@dataclass(frozen=True)
class DeadLetterMessage:
    """One message of the dead-letter topic."""

    reason: str
    error: str  # at most MAX_ERROR_CHARS
    worker: str
    model_version: str | None  # the store serving when it was dead-lettered (None: none yet, or not a record's fault)
    dead_lettered_at: str  # ISO 8601, UTC, milliseconds
    original_size: int  # bytes of the original's full extended-JSON text
    original_sha256: str
    truncated: bool  # whether the quote is less than the original
    document_json: str  # the quote: the original as (extended) JSON text, cut to fit when ``truncated``
    source: Any = None  # where the record was read, as in a verdict (service/supersede.py); None: not recorded

    @property
    def document(self) -> Any:
        return json.loads(self.document_json)

    def to_bytes(self, dumps: Callable[[Any], bytes]) -> bytes:
        """The message, its fields written by ``dumps`` (the worker's JSON encoder) and the quote
        spliced in as text: it is already serialised (and must stay valid JSON)."""
        fields: dict[str, Any] = {
            "dead_letter_version": DEAD_LETTER_VERSION,
            "reason": self.reason,
            "error": self.error[:MAX_ERROR_CHARS],
            "worker": self.worker,
            "model_version": self.model_version,
            "dead_lettered_at": self.dead_lettered_at,
            "original_size": self.original_size,
            "original_sha256": self.original_sha256,
            "truncated": self.truncated,
        }
        if self.source is not None:
            fields["source"] = self.source
        head = dumps(fields)
        return head[:-1] + b',"document":' + self.document_json.encode("utf-8", errors="replace") + b"}"

    @classmethod
    def from_bytes(cls, value: bytes | str) -> DeadLetterMessage:
        try:
            raw = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DeadLetterFormatError(f"dead letter: not JSON ({exc.__class__.__name__}: {exc})".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise DeadLetterFormatError(f"dead letter: expected a JSON object, got {type(raw).__name__}")
        found = raw.get("dead_letter_version")
        if type(found) is not int or found != DEAD_LETTER_VERSION:
            written = "written before dead letters carried a version" if found is None else "written by another moldwatch"
            raise DeadLetterFormatError(f"dead letter: dead_letter_version {found!r} is not supported (expected "
                                        f"{DEAD_LETTER_VERSION}); {written}")

        def field(name: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
            if name not in raw:
                raise DeadLetterFormatError(f"dead letter: field {name!r} is missing")
            value = raw[name]
            if object in kinds or (value is None and optional):
                return value
            if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):  # JSON true is no number
                return value
            raise DeadLetterFormatError(f"dead letter: field {name!r} must be {' or '.join(k.__name__ for k in kinds)}"
                                        f"{' or null' if optional else ''}, got {type(value).__name__}")

        return cls(
            reason=field("reason", (str,)), error=field("error", (str,)), worker=field("worker", (str,)),
            model_version=field("model_version", (str,), optional=True), dead_lettered_at=field("dead_lettered_at", (str,)),
            original_size=field("original_size", (int,)), original_sha256=field("original_sha256", (str,)),
            truncated=field("truncated", (bool,)),
            document_json=json.dumps(field("document", (object,)), ensure_ascii=False),
            source=raw.get("source"),
        )


__all__ = ["DEAD_LETTER_VERSION", "REASONS", "FEEDBACK_REASONS", "DeadLetter", "DeadLetterMessage", "DeadLetterFormatError", "UNDECODABLE",
           "SCORING_FAILED", "MESSAGE_TOO_LARGE", "SERIALIZATION_FAILED", "REJECTED_BY_BROKER", "MAX_ERROR_CHARS"]
