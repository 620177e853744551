"""Reading one JSON document field by field, each refusal naming the file and the field.

The store format (:mod:`model_store.serving.store_format`) is read through :class:`Fields`: a
refusal is a :class:`~model_store.errors.StoreError` of one line, ``<file>: field
'groups[3].threshold.base' is nan (must be a finite number); retrain the store with 'moldwatch
train'``, whatever is wrong and however deep.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from model_store.errors import StoreError

RETRAIN = "retrain the store with 'moldwatch train'"

T = TypeVar("T")


class Fields:
    """One JSON object of the manifest: typed reads, each refusal naming the file and the field."""

    def __init__(self, raw: Any, source: str, path: str = "") -> None:
        self.source = source
        self.path = path
        if not isinstance(raw, Mapping):
            self.refuse(path or "the manifest", f"must be a JSON object, got {kind_of(raw)}")
        self.raw: Mapping[str, Any] = raw

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def refuse(self, name: str, problem: str) -> NoReturn:
        raise StoreError(f"{self.source}: field {name!r} {problem}; {RETRAIN}")

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def value(self, key: str) -> Any:
        if key not in self.raw:
            self.refuse(self.name(key), "is missing")
        return self.raw[key]

    def text(self, key: str, default: str | None = None) -> str:
        if default is not None and key not in self.raw:
            return default
        return _text(self.value(key), self.name(key), self)

    def optional_text(self, key: str) -> str | None:
        return None if self.raw.get(key) is None else _text(self.raw[key], self.name(key), self)

    def integer(self, key: str, default: int | None = None) -> int:
        if default is not None and key not in self.raw:
            return default
        return _integer(self.value(key), self.name(key), self)

    def optional_integer(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else _integer(self.raw[key], self.name(key), self)

    def number(self, key: str, default: float | None = None) -> float:
        if default is not None and key not in self.raw:
            return default
        return _number(self.value(key), self.name(key), self)

    def optional_number(self, key: str) -> float | None:
        return None if self.raw.get(key) is None else _number(self.raw[key], self.name(key), self)

    def flag(self, key: str, default: bool | None = None) -> bool:
        if default is not None and key not in self.raw:
            return default
        value = self.value(key)
        if not isinstance(value, bool):
            self.refuse(self.name(key), f"must be true or false, got {kind_of(value)}")
        return value

    def numbers(self, key: str, length: int | None = None) -> tuple[float, ...]:
        values = self.items(key, _number)
        self._length(key, values, length)
        return values

    def numbers_or_none(self, key: str, length: int | None = None) -> tuple[float | None, ...]:
        """A list of numbers where null stands for 'unknown' (a median of no measurement)."""
        values = self.items(key, lambda v, n, f: None if v is None else _number(v, n, f))
        self._length(key, values, length)
        return values

    def texts(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if default is not None and key not in self.raw:
            return default
        return self.items(key, _text)

    def items(self, key: str, read: Callable[[Any, str, Fields], T]) -> tuple[T, ...]:
        values = self.value(key)
        if not isinstance(values, list):
            self.refuse(self.name(key), f"must be a list, got {kind_of(values)}")
        return tuple(read(v, f"{self.name(key)}[{i}]", self) for i, v in enumerate(values))

    def objects(self, key: str) -> tuple[Fields, ...]:
        return self.items(key, lambda v, n, f: Fields(v, f.source, n))

    def child(self, key: str) -> Fields:
        return Fields(self.value(key), self.source, self.name(key))

    def children(self, key: str, default: Mapping[str, Any] | None = None) -> dict[str, Fields]:
        """A JSON object of objects, by key (``default`` when absent)."""
        if default is not None and key not in self.raw:
            return {}
        section = self.child(key)
        return {str(k): Fields(v, self.source, f"{section.path}.{k}") for k, v in section.raw.items()}

    def json_object(self, key: str) -> dict[str, Any] | None:
        """A section kept as JSON (see the module's docstring); None when absent."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if not isinstance(value, dict):
            self.refuse(self.name(key), f"must be a JSON object, got {kind_of(value)}")
        return value

    def _length(self, key: str, values: tuple[Any, ...], length: int | None) -> None:
        if length is not None and len(values) != length:
            self.refuse(self.name(key), f"has {len(values)} values, expected {length}")


def read(kind: Callable[[Fields], T], raw: Any, source: str = "manifest.json", path: str = "") -> T:
    """One structure of the manifest from its JSON (``kind``: a class's ``from_dict``), e.g. a
    conditional unit's entry; ``source`` and ``path`` name it in a refusal."""
    return kind(Fields(raw, source, path))


def kind_of(value: Any) -> str:
    return "null" if value is None else {bool: "true/false", str: "text", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _text(value: Any, name: str, where: Fields) -> str:
    if not isinstance(value, str):
        where.refuse(name, f"must be text, got {kind_of(value)}")
    return value


def _integer(value: Any, name: str, where: Fields) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.refuse(name, f"must be a whole number, got {kind_of(value)}")
    return value


def _number(value: Any, name: str, where: Fields) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where.refuse(name, f"must be a number, got {kind_of(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        where.refuse(name, f"is {number} (must be a finite number)")
    return number
