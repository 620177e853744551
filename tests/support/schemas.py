"""Small plant schemas written in code, for tests of the schema and of what is read through it."""
from __future__ import annotations

from model_store.schema import PlantSchema, parse_schema


def two_maker_schema() -> PlantSchema:
    """Makers A (set point s1; production p1, p2) and B (t1; q1), maker named by column ``mk``."""
    return parse_schema(
        {
            "record_id": "id", "timestamp": "ts", "facility": "fac", "item": "part",
            "maker": {"column": "mk"},
            "makers": {"A": {"settings": ["s1"], "production": ["p1", "p2"]}, "B": {"settings": ["t1"], "production": ["q1"]}},
        },
        source="plant.yaml",
    )
