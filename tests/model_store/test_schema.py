from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.errors import DataError, SchemaError
from model_store.schema import canonical_lots, canonical_records, load_schema, parse_schema

KAMP = Path(__file__).parents[2] / "model_store" / "schemas" / "kamp.yaml"


def _schema():
    return parse_schema(
        {
            "record_id": "id", "timestamp": "ts", "facility": "fac", "item": "part",
            "maker": {"column": "mk"},
            "makers": {"A": {"settings": ["s1"], "production": ["p1", "p2"]}, "B": {"settings": ["t1"], "production": ["q1"]}},
        },
        source="plant.yaml",
    )


def _records(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"id": [1, 2], "ts": ["2026-01-01 08:00:00", "2026-01-01 08:00:30"], "fac": ["F1", "F2"], "part": ["X", "Y"],
         "mk": ["A", "B"], "s1": [1.0, np.nan], "p1": [2.0, np.nan], "p2": ["3.5", None], "t1": [np.nan, 7.0], "q1": [np.nan, 8.0]}
    )
    for key, value in changes.items():
        frame[key] = value
    return frame


def test_kamp_example_parses() -> None:
    schema = load_schema(KAMP)
    assert schema.maker_constant == "kamp" and "Mold_Temperature_4" in schema.makers["kamp"].settings
    assert schema.label == "PassOrFail"


def test_canonical_records_renames_and_types() -> None:
    out = canonical_records(_records(), _schema())
    assert list(out["record_id"]) == ["1", "2"] and list(out["lot_date"]) == ["2026-01-01"] * 2
    assert out["p2"].dtype == float and out["maker"].tolist() == ["A", "B"]


@pytest.mark.parametrize(
    "frame, message",
    [
        (_records().drop(columns=["fac"]), "missing column 'fac'"),
        (_records(mk=["A", "Z"]), "unknown maker in column 'mk', row 2"),
        (_records(p1=[1.0, "hot"]), "column 'p1' must be numeric; row 2 (value 'hot')"),
        (_records(ts=["2026-01-01", "yesterday"]), "column 'ts' must hold timestamps"),
        (_records().iloc[0:0], "no rows"),
    ],
    ids=["missing-column", "unknown-maker", "text-in-numeric", "bad-timestamp", "empty"],
)
def test_bad_records_name_the_problem(frame, message) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_records(frame, _schema(), source="records.csv")


def test_schema_errors_name_the_file() -> None:
    with pytest.raises(SchemaError, match=r"plant.yaml: 'maker' must be"):
        parse_schema({"record_id": "a", "timestamp": "b", "facility": "c", "item": "d", "makers": {}}, source="plant.yaml")
    with pytest.raises(SchemaError, match=r"listed as both"):
        parse_schema(
            {"record_id": "a", "timestamp": "b", "facility": "c", "item": "d", "maker": {"constant": "A"},
             "makers": {"A": {"settings": ["x"], "production": ["x"]}}},
            source="plant.yaml",
        )


def test_missing_schema_file(tmp_path) -> None:
    with pytest.raises(SchemaError, match="schema file not found"):
        load_schema(tmp_path / "nope.yaml")


def test_a_data_file_given_as_the_schema_is_one_line_naming_it(tmp_path) -> None:
    parquet = tmp_path / "records.parquet"
    parquet.write_bytes(b"PAR1\x15\x04\x15\xa0\x9c\x01\x15\xff\xfe\x00")
    with pytest.raises(SchemaError, match=r"records.parquet: not a text file \(a schema is YAML or TOML"):
        load_schema(parquet)


def test_lots_validation() -> None:
    lots = pd.DataFrame({"facility": ["F1"], "item": ["X"], "lot_date": ["2026-01-01"], "good_qty": [10], "bad_qty": [-1]})
    with pytest.raises(DataError, match="bad_qty' must be a non-negative count"):
        canonical_lots(lots, _schema())


def test_schema_hash_ignores_formatting_but_not_roles() -> None:
    a, b = _schema(), _schema()
    assert a.hash() == b.hash()
    c = parse_schema({**a.to_dict(), "item": "other"})
    assert c.hash() != a.hash()


def test_a_misspelt_key_is_named_with_the_key_it_resembles() -> None:
    raw = {"recordid": "a", "timestamp": "b", "facility": "c", "item": "d", "maker": {"constant": "A"},
           "makers": {"A": {"settings": ["x"], "production": ["y"]}}}
    with pytest.raises(SchemaError, match=r"plant.yaml: unknown key 'recordid' \(did you mean 'record_id'\?\)"):
        parse_schema(raw, source="plant.yaml")
    with pytest.raises(SchemaError, match=r"unknown key 'zzz'; the keys are name, record_id"):
        parse_schema({**{k: v for k, v in raw.items() if k != "recordid"}, "record_id": "a", "zzz": 1}, source="plant.yaml")


@pytest.mark.parametrize(("text", "suffix", "expected"), [
    ("maker: [a\nfoo: : :\n", ".yaml",
     "line 2, column 4: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at line 1)"),
    ("maker: x\n\tfoo: 1\n", ".yaml", "line 2, column 1: not valid YAML: found character '\\t' that cannot start any token"),
    ("a = [1,\nb = 2\n", ".toml", ": not valid TOML: Invalid value (at line 2, column 1)"),
])
def test_a_schema_syntax_error_names_file_line_and_column(tmp_path, text: str, suffix: str, expected: str) -> None:
    path = tmp_path / f"schema{suffix}"
    path.write_text(text)
    with pytest.raises(SchemaError) as caught:
        load_schema(path)
    assert str(caught.value) == f"{path}{', ' if suffix == '.yaml' else ''}{expected}"
