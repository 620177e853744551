"""The dead letter (service/dead_letter.py): what the sink writes is what a consumer reads back,
field for field; another version, or a field missing or of the wrong type, is refused by name."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dead_letter import (
    DEAD_LETTER_VERSION,
    MAX_ERROR_CHARS,
    REASONS,
    DeadLetter,
    DeadLetterFormatError,
    DeadLetterMessage,
)
from service.sink import dead_letter_value

FIELDS = ["dead_letter_version", "reason", "error", "worker", "model_version", "dead_lettered_at", "original_size",
          "original_sha256", "truncated", "document"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=100, deadline=None)
@given(document=JSON, reason=st.sampled_from(REASONS), error=st.text(max_size=2500),
       model_version=st.none() | st.text(min_size=1, max_size=8), source=st.none() | st.fixed_dictionaries({"kind": st.text(max_size=5)}))
def test_what_the_sink_writes_reads_back(document: Any, reason: str, error: str, model_version: str | None, source: Any) -> None:
    value = dead_letter_value(DeadLetter(reason, error, document), "w1", model_version, source)
    message = DeadLetterMessage.from_bytes(value)
    assert (message.reason, message.error, message.worker, message.model_version, message.source) == (
        reason, error[:MAX_ERROR_CHARS], "w1", model_version, source)
    assert message.document == document and not message.truncated
    assert list(json.loads(value))[: len(FIELDS) - 1] == FIELDS[:-1] and json.loads(value)["dead_letter_version"] == 1
    assert json.loads(message.to_bytes(lambda v: json.dumps(v).encode())) == json.loads(value)  # and writes the same again


def _letter(**changes: Any) -> bytes:
    raw = json.loads(dead_letter_value(DeadLetter("invalid_field", "v: bad", {"v": "x"}), "w", "v1"))
    raw.update(changes)
    return json.dumps({k: v for k, v in raw.items() if v is not ...}).encode()


@pytest.mark.parametrize("value, says", [
    (_letter(dead_letter_version=2), "dead_letter_version 2 is not supported (expected 1); written by another moldwatch"),
    (_letter(dead_letter_version=...), "dead_letter_version None is not supported (expected 1); written before dead letters"),
    (_letter(original_size="12"), "field 'original_size' must be int, got str"),
    (_letter(original_size=True), "field 'original_size' must be int, got bool"),
    (_letter(truncated=...), "field 'truncated' is missing"),
    (_letter(model_version=3), "field 'model_version' must be str or null, got int"),
    (b"[1]", "expected a JSON object, got list"),
    (b"{nope", "not JSON"),
])
def test_a_bad_dead_letter_is_refused_naming_the_field(value: bytes, says: str) -> None:
    with pytest.raises(DeadLetterFormatError) as caught:
        DeadLetterMessage.from_bytes(value)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_version_is_one() -> None:
    assert DEAD_LETTER_VERSION == 1  # a change here is a change for every consumer of the dead-letter topic
