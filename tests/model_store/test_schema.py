import re
from pathlib import Path

import pytest

from model_store.errors import SchemaError
from model_store.schema import load_schema, parse_schema
from tests.support.schemas import two_maker_schema

KAMP = Path(__file__).parents[2] / "model_store" / "schemas" / "kamp.yaml"


def test_kamp_example_parses() -> None:
    schema = load_schema(KAMP)
    assert schema.maker_constant == "kamp" and "Mold_Temperature_4" in schema.makers["kamp"].settings
    assert schema.label == "PassOrFail"


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


def test_schema_hash_ignores_formatting_but_not_roles() -> None:
    a, b = two_maker_schema(), two_maker_schema()
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


def test_a_misspelt_key_inside_a_maker_is_named_too() -> None:
    raw = {"record_id": "a", "timestamp": "b", "facility": "c", "item": "d", "maker": {"constant": "A"},
           "makers": {"A": {"setings": ["x"], "settings": ["w"], "production": ["y"]}}}
    with pytest.raises(SchemaError, match=r"plant.yaml: unknown key 'setings' in makers.A \(did you mean 'settings'\?\)"):
        parse_schema(raw, source="plant.yaml")


def test_a_lot_date_format_is_a_role_of_the_schema() -> None:
    schema = parse_schema({**two_maker_schema().to_dict(), "lot_date_format": "%d.%m.%Y"})
    assert schema.lot_date_format == "%d.%m.%Y"
    assert parse_schema(schema.to_dict()).lot_date_format == "%d.%m.%Y"
    assert schema.hash() != two_maker_schema().hash()  # it changes which lot a record belongs to


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


@pytest.mark.parametrize(("content", "name", "expected"), [
    ("shot_id,facility\n1,F1\n", "lots.csv", "expected a mapping at the top level, got str (a schema names the plant's "
                                             "columns"),
    ('{"shot_id": "S1", "facility": "F11", "cushion": 4.2}', "record.json",
     "not a plant schema (it has no 'makers' and mostly other keys: 'shot_id', 'cushion'): was a record, a store "
     "manifest or another file given as --schema?"),
    ('{"store_format": 5, "model_version": "v1", "groups": [], "schema": {}}', "manifest.json",
     "not a plant schema (it has no 'makers' and mostly other keys: 'store_format', 'model_version', 'groups' ...)"),
])
def test_a_file_that_is_not_a_schema_says_so(tmp_path: Path, content: str, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SchemaError, match=re.escape(expected)):
        load_schema(path)


def test_a_folder_given_as_schema_points_at_the_schema_inside(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text("name: x\n")
    with pytest.raises(SchemaError, match=re.escape(f"{tmp_path}: is a directory; --schema takes the plant's schema file "
                                                    f"(it holds schema.yaml: give that file)")):
        load_schema(tmp_path)
