"""How `moldwatch score --records -` splits stdin into records (service/cli.py ``_json_lines``)."""
from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_store.errors import MoldwatchError
from service.cli import _json_lines


def test_json_lines_pretty_printed_objects_and_arrays_each_with_the_line_it_starts_on() -> None:
    text = '{"a": 1}\n\n{\n  "b": 2,\n  "c": [1, 2]\n}\n[{"d": 3},\n {"e": 4}]\n'
    rows, lines = _json_lines(io.StringIO(text))
    assert rows == [{"a": 1}, {"b": 2, "c": [1, 2]}, {"d": 3}, {"e": 4}]
    assert lines == [1, 3, 7, 7]


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1}\n{not json\n', "stdin line 2: not JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('{"a": 1}\n\n  7\n', "stdin line 3: expected a JSON object (one record), got int"),
    ('[{"a": 1}, "x"]', "stdin line 1: expected a JSON object (one record), got str"),
    ("\n  \n", "stdin: no records; expected JSON objects, one record each (JSON lines, or pretty-printed)"),
    ('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000, "stdin line 2: JSON nested too deep for a record"),
])
def test_refused_input_names_the_line(text: str, message: str) -> None:
    with pytest.raises(MoldwatchError) as caught:
        _json_lines(io.StringIO(text))
    assert str(caught.value) == message


records = st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5) | st.none(), max_size=4),
                   min_size=1, max_size=6)


@given(records, st.sampled_from([None, 2]))
def test_any_layout_of_the_same_records_reads_the_same(rows: list[dict], indent: int | None) -> None:
    text = "\n".join(json.dumps(row, indent=indent) for row in rows)
    assert _json_lines(io.StringIO(text))[0] == rows
    assert _json_lines(io.StringIO(json.dumps(rows, indent=indent)))[0] == rows
