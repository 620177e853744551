"""Plant schema: maps one plant's own export onto moldwatch's roles.

A plant names its columns its own way and each machine maker records its own fields. The schema
file (YAML or TOML) is the only place where such names appear; everything downstream works on the
canonical frame produced by :func:`model_store.canonical.canonical_records`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_store.errors import SchemaError

# Canonical column names of the records frame that every later step uses.
RECORD_ID = "record_id"
TIMESTAMP = "timestamp"
MAKER = "maker"
FACILITY = "facility"
ITEM = "item"
LOT_DATE = "lot_date"
LABEL = "label"

LOT_COLUMNS: tuple[str, ...] = ("facility", "item", "lot_date", "good_qty", "bad_qty")


@dataclass(frozen=True)
class MakerFields:
    """The fields one machine maker records: set points and measured production values."""

    settings: tuple[str, ...]
    production: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.settings + self.production


@dataclass(frozen=True)
class PlantSchema:
    """Roles of a plant's export. Column names are the plant's own."""

    name: str
    record_id: str
    timestamp: str
    facility: str
    item: str
    makers: Mapping[str, MakerFields]
    maker_column: str | None = None
    maker_constant: str | None = None
    lot_date: str | None = None
    label: str | None = None
    timestamp_format: str | None = None
    # strptime format of lot dates (records' lot_date column and the lot table), e.g. "%d.%m.%Y";
    # without it a lot date that reads both day first and month first is refused
    lot_date_format: str | None = None
    # IANA time zone of the plant's clocks (e.g. "Asia/Seoul"): a timestamp written without an
    # offset is wall-clock time there, and a lot day taken from a timestamp is that zone's day.
    # None: such timestamps are UTC (as before the setting).
    timezone: str | None = None
    lot_columns: Mapping[str, str] = field(default_factory=lambda: {c: c for c in LOT_COLUMNS})
    source: str = "<memory>"

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        """Every setting and production field of every maker, each once, in schema order."""
        seen: dict[str, None] = {}
        for fields in self.makers.values():
            for name in fields.all:
                seen.setdefault(name, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "record_id": self.record_id,
            "timestamp": self.timestamp,
            "facility": self.facility,
            "item": self.item,
            "maker": {"column": self.maker_column} if self.maker_column else {"constant": self.maker_constant},
            "makers": {
                m: {"settings": list(f.settings), "production": list(f.production)} for m, f in self.makers.items()
            },
            "lots": dict(self.lot_columns),
        }
        if self.lot_date:
            out["lot_date"] = self.lot_date
        if self.label:
            out["label"] = self.label
        if self.timestamp_format:
            out["timestamp_format"] = self.timestamp_format
        if self.lot_date_format:
            out["lot_date_format"] = self.lot_date_format
        if self.timezone:
            out["timezone"] = self.timezone
        return out

    def hash(self) -> str:
        """Stable digest of the roles (not of the file's formatting): stores record it to refuse mixing plants."""
        body = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def _require_str(raw: Mapping[str, Any], key: str, source: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{source}: '{key}' must name a column (a non-empty string), got {value!r}")
    return value


def _str_list(value: Any, where: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SchemaError(f"{source}: {where} must be a list of column names, got {value!r}")
    if len(set(value)) != len(value):
        dupes = sorted({v for v in value if value.count(v) > 1})
        raise SchemaError(f"{source}: {where} lists {dupes} more than once")
    return tuple(value)


SCHEMA_KEYS = ("name", "record_id", "timestamp", "timestamp_format", "timezone", "facility", "item", "lot_date",
               "lot_date_format", "label", "maker", "makers", "lots")
MAKER_KEYS = ("settings", "production")


def parse_schema(raw: Mapping[str, Any], source: str = "<memory>") -> PlantSchema:
    """Build and check a :class:`PlantSchema` from a parsed YAML/TOML mapping."""
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{source}: expected a mapping at the top level, got {type(raw).__name__} (a schema names the "
                          f"plant's columns: record_id, timestamp, facility, item, maker, makers; was a data file given as "
                          f"--schema?)")
    unknown = [str(k) for k in raw if k not in SCHEMA_KEYS]
    if unknown and "makers" not in raw and len(unknown) >= len(raw) - len(unknown):  # mostly other keys, no makers
        raise SchemaError(f"{source}: not a plant schema (it has no 'makers' and mostly other keys: "
                          f"{', '.join(repr(k) for k in unknown[:3])}{' ...' if len(unknown) > 3 else ''}): was a record, "
                          f"a store manifest or another file given as --schema?")
    if unknown:
        close = difflib.get_close_matches(unknown[0], SCHEMA_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; the keys are {', '.join(SCHEMA_KEYS)}"
        raise SchemaError(f"{source}: unknown key {unknown[0]!r}{hint}")
    maker_spec = raw.get("maker")
    maker_column = maker_constant = None
    if isinstance(maker_spec, Mapping) and isinstance(maker_spec.get("column"), str):
        maker_column = maker_spec["column"]
    elif isinstance(maker_spec, Mapping) and isinstance(maker_spec.get("constant"), str):
        maker_constant = maker_spec["constant"]
    else:
        raise SchemaError(f"{source}: 'maker' must be {{column: NAME}} or {{constant: MAKER}}, got {maker_spec!r}")

    makers_raw = raw.get("makers")
    if not isinstance(makers_raw, Mapping) or not makers_raw:
        raise SchemaError(f"{source}: 'makers' must map each maker to its settings and production fields")
    makers: dict[str, MakerFields] = {}
    for maker, spec in makers_raw.items():
        if not isinstance(spec, Mapping):
            raise SchemaError(f"{source}: makers.{maker} must have 'settings' and 'production' lists")
        unknown_fields = [str(k) for k in spec if k not in MAKER_KEYS]
        if unknown_fields:
            close = difflib.get_close_matches(unknown_fields[0], MAKER_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else "; a maker has 'settings' and 'production'"
            raise SchemaError(f"{source}: unknown key {unknown_fields[0]!r} in makers.{maker}{hint}")
        settings = _str_list(spec.get("settings"), f"makers.{maker}.settings", source)
        production = _str_list(spec.get("production"), f"makers.{maker}.production", source)
        if not settings or not production:
            raise SchemaError(f"{source}: makers.{maker} needs at least one setting and one production field")
        overlap = sorted(set(settings) & set(production))
        if overlap:
            raise SchemaError(f"{source}: makers.{maker}: {overlap} are listed as both setting and production")
        makers[str(maker)] = MakerFields(settings, production)
    if maker_constant is not None and maker_constant not in makers:
        raise SchemaError(f"{source}: maker constant {maker_constant!r} is not one of 'makers' ({', '.join(makers)})")

    lots_raw = raw.get("lots", {}) or {}
    if not isinstance(lots_raw, Mapping) or not set(lots_raw) <= set(LOT_COLUMNS):
        raise SchemaError(f"{source}: 'lots' may only rename {', '.join(LOT_COLUMNS)}; got {lots_raw!r}")
    lot_columns = {c: str(lots_raw.get(c, c)) for c in LOT_COLUMNS}

    optional = {}
    for key in ("lot_date", "label", "timestamp_format", "lot_date_format", "timezone"):
        if raw.get(key) is not None:
            optional[key] = _require_str(raw, key, source)
    if "timezone" in optional:
        check_timezone(optional["timezone"], source)
    return PlantSchema(
        name=str(raw.get("name", Path(source).stem)),
        record_id=_require_str(raw, "record_id", source),
        timestamp=_require_str(raw, "timestamp", source),
        facility=_require_str(raw, "facility", source),
        item=_require_str(raw, "item", source),
        makers=makers,
        maker_column=maker_column,
        maker_constant=maker_constant,
        lot_columns=lot_columns,
        source=source,
        **optional,
    )


def check_timezone(name: str, source: str) -> None:
    """A schema's ``timezone``: an IANA name the time zone database knows, or one line saying so."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError; a path-like name a ValueError
        raise SchemaError(f"{source}: timezone {name!r} is not a time zone the time zone database knows; write an IANA "
                          f"name such as Asia/Seoul, Europe/Berlin, America/Chicago or UTC") from None


def load_schema(path: str | Path) -> PlantSchema:
    """Read a plant schema from a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))
        hint = f" (it holds {', '.join(inside[:3])}: give that file)" if inside else ""
        raise SchemaError(f"{path}: is a directory; --schema takes the plant's schema file{hint}")
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SchemaError(f"{path}: not a text file (a schema is YAML or TOML; was a data file given as --schema?)") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read the schema ({exc.strerror or exc})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError(syntax_error(path, exc)) from None
    return parse_schema(raw, source=str(path))


def syntax_error(path: Path, exc: Exception) -> str:
    """One line naming the file, the line and column (1-based) and what the parser expected."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        return f"{where}: not valid YAML: {exc.problem}{context}"
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    return f"{path}: not valid {kind}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def write_schema(schema: PlantSchema, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(schema.to_dict(), sort_keys=False), encoding="utf-8")
