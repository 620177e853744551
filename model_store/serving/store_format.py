"""The model store's format: every structure of ``manifest.json`` serving reads, typed, in one place.

Training writes a manifest through :meth:`Manifest.to_dict` (``model_store/store.py`` parses what
training built with :meth:`Manifest.from_dict` first, so nothing the reader would refuse is ever
written); serving reads it through :meth:`Manifest.from_dict` (``model_store/serving/store.py``).
``from_dict`` refuses a manifest of another format version, or one with a field that is missing,
of the wrong type, or a number that is not finite, with one line that names the file and the field
(``groups[3].threshold.base``) and says to retrain the store.

Every number in a manifest is finite: the writer dumps JSON with ``allow_nan=False``, so a NaN or
an infinity can only come from an edited file.

Fields added to format 4 after its first stores are optional; where one is absent, the value it
reads as is the one that serves such a store exactly as before the field existed (``LEGACY_*``),
which is not always training's default for new stores (``model_store/config.py``).

Sections only the training report reads (the group table, per-group training figures, history
figures, the report's setting clusters) and sections with a typed reader of their own (the plant
schema: :func:`model_store.schema.parse_schema`; setting models:
:class:`model_store.serving.clusters.SettingModel`; drift references:
:func:`model_store.serving.drift.references_from_manifest`) are kept here as JSON, written back
unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from model_store.config import (
    COMBINE_RULES,
    ConditionalConfig,
    DriftReferenceConfig,
    GroupingConfig,
    ModelConfig,
    ThresholdConfig,
    TrainingConfig,
)
from model_store.errors import StoreError
from model_store.serving.manifest_fields import RETRAIN, Fields, kind_of, read
from model_store.serving.thresholds import GroupThreshold

__all__ = [
    "STORE_FORMAT", "FORMAT_HISTORY", "Manifest", "GroupEntry", "StoreGroupKey", "Band", "FacilityDefaults", "SettingProfile",
    "Calibration", "CalibrationUnit", "PathUse", "ConditionalSection", "ConditionalUnitEntry", "UnitLine",
    "ConditionalProbabilityEntry", "NO_CONDITIONAL", "config_from_dict", "read", "Fields",
]

STORE_FORMAT = 4
# What each format brought: named when an older store is refused, so its owner knows why.
FORMAT_HISTORY = {
    2: "error scales, NumPy forests, setting profiles",
    3: "excursion bands, pooled part groups, lot calibration",
    4: "setting-conditioned units per maker (conditional/)",
}

# Values of fields that format 4 gained after its first stores, as such stores were served.
LEGACY_COMBINE = "conditional"  # the conditional scorer decided before combine was recorded
LEGACY_GROUP_EXCURSIONS = True  # the setting groups' excursion bands always held
LEGACY_PROBABILITY_BLEND = 1.0  # no blend with the base rate
LEGACY_RESIDUAL_EVIDENCE = "tails"
LEGACY_RAW_WEIGHT = 1.0
LEGACY_BASELINE_HALFLIFE = 0.0  # no running baseline
LEGACY_BASELINE_CLIP = 4.0
LEGACY_LASTING_RATIO = 1.0  # every lasting gross excursion alarmed
LEGACY_FOLLOW_NEW_SETTINGS = False
LEGACY_FOLLOW_NEW_PARTS = False
LEGACY_BASELINE_SHIFT_RUN = 0  # no level-shift rule in the running baseline
LEGACY_LASTING_AT_LINE = False  # a lasting excursion scored its whole ratio
# A unit from before it recorded its excursion share used the setting groups' share.
LEGACY_EXCURSION_SHARE = ThresholdConfig().excursion_band_share


def _list(values: tuple[Any, ...]) -> list[Any]:
    return list(values)


# -- setting groups ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreGroupKey:
    """A setting group's key: maker, facility, item and setting cluster (-1: the part's pooled group)."""

    maker: str
    facility: str
    item: str
    cluster: int

    @classmethod
    def from_dict(cls, raw: Fields) -> StoreGroupKey:
        return cls(raw.text("maker"), raw.text("facility"), raw.text("item"), raw.integer("cluster"))

    def to_dict(self) -> dict[str, Any]:
        return {"maker": self.maker, "facility": self.facility, "item": self.item, "cluster": self.cluster}


@dataclass(frozen=True)
class Band:
    """Per field, the low and high edge of what history produced (raw units)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_dict(cls, raw: Fields, length: int | None = None) -> Band:
        return cls(raw.numbers("low", length), raw.numbers("high", length))

    def to_dict(self) -> dict[str, Any]:
        return {"low": _list(self.low), "high": _list(self.high)}


@dataclass(frozen=True)
class GroupEntry:
    """One trained setting group (written by ``model_store/group_training.py``)."""

    id: str
    key: StoreGroupKey
    model_kind: str
    artifacts: dict[str, str]  # role ("model", "forward") -> path in the store
    rows: int
    lots: int
    lot_defect_rate: float
    features: tuple[str, ...]
    scaler_min: tuple[float, ...]
    scaler_max: tuple[float, ...]
    feature_means: tuple[float, ...]
    feature_median_scaled: tuple[float, ...]
    feature_error_scale: tuple[float, ...]
    feature_median_raw: tuple[float, ...]
    feature_band: Band
    loss_summary: dict[str, float]
    threshold: GroupThreshold
    setting_centroid: tuple[float, ...]
    setting_mode: tuple[float | None, ...]
    training: dict[str, Any]  # fit figures for the report (seconds, loss histogram...)

    @classmethod
    def from_dict(cls, raw: Fields) -> GroupEntry:
        features = raw.texts("features")
        n = len(features)
        artifacts = raw.child("artifacts")
        scaler = raw.child("scaler")
        summary = raw.child("loss_summary")
        threshold = raw.child("threshold")
        if "forward" not in artifacts.raw:
            artifacts.refuse(artifacts.name("forward"), "is missing")
        median_raw = raw.numbers("feature_median_raw")
        if len(median_raw) not in (0, n):  # empty: a group of no rows (never trained, but readable)
            raw.refuse(raw.name("feature_median_raw"), f"has {len(median_raw)} values, expected {n}")
        return cls(
            id=raw.text("id"),
            key=StoreGroupKey.from_dict(raw.child("key")),
            model_kind=raw.text("model_kind"),
            artifacts={k: artifacts.text(k) for k in artifacts.raw},
            rows=raw.integer("rows"),
            lots=raw.integer("lots"),
            lot_defect_rate=raw.number("lot_defect_rate"),
            features=features,
            scaler_min=scaler.numbers("min", n),
            scaler_max=scaler.numbers("max", n),
            feature_means=raw.numbers("feature_means", n),
            feature_median_scaled=raw.numbers("feature_median_scaled", n),
            feature_error_scale=raw.numbers("feature_error_scale", n),
            feature_median_raw=median_raw,
            feature_band=Band.from_dict(raw.child("feature_band"), n),
            loss_summary={k: summary.number(k) for k in summary.raw},
            threshold=GroupThreshold(**{f.name: threshold.number(f.name) for f in fields(GroupThreshold)}),
            setting_centroid=raw.numbers("setting_centroid"),
            setting_mode=raw.numbers_or_none("setting_mode"),
            training=raw.json_object("training") or {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "key": self.key.to_dict(), "model_kind": self.model_kind, "artifacts": dict(self.artifacts),
            "rows": self.rows, "lots": self.lots, "lot_defect_rate": self.lot_defect_rate, "features": _list(self.features),
            "scaler": {"min": _list(self.scaler_min), "max": _list(self.scaler_max)},
            "feature_means": _list(self.feature_means), "feature_median_scaled": _list(self.feature_median_scaled),
            "feature_error_scale": _list(self.feature_error_scale), "feature_median_raw": _list(self.feature_median_raw),
            "feature_band": self.feature_band.to_dict(), "loss_summary": dict(self.loss_summary),
            "threshold": self.threshold.to_dict(), "setting_centroid": _list(self.setting_centroid),
            "setting_mode": _list(self.setting_mode), "training": self.training,
        }


# -- what serving knows of each facility and setting ----------------------------------------------
@dataclass(frozen=True)
class FacilityDefaults:
    """A facility's usual item and setting combination, for a record that names neither."""

    item: str | None
    settings: tuple[float, ...] | None = None  # absent: no complete combination in history
    settings_by_item: dict[str, tuple[float, ...]] | None = None

    @classmethod
    def from_dict(cls, raw: Fields) -> FacilityDefaults:
        by_item = raw.child("settings_by_item") if "settings_by_item" in raw.raw else None
        return cls(
            item=raw.optional_text("item"),
            settings=raw.numbers("settings") if "settings" in raw.raw else None,
            settings_by_item=None if by_item is None else {k: by_item.numbers(k) for k in by_item.raw},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item": self.item}
        if self.settings is not None:
            out["settings"] = _list(self.settings)
        if self.settings_by_item is not None:
            out["settings_by_item"] = {k: _list(v) for k, v in self.settings_by_item.items()}
        return out


@dataclass(frozen=True)
class SettingProfile:
    """What one (facility, item, setting cluster) produced in history (see ``training.setting_profiles``)."""

    facility: str
    item: str
    cluster: int
    rows: int
    median: tuple[float | None, ...]  # per production field; None: never measured
    setting_centroid: tuple[float, ...]
    setting_radius: float
    band: Band

    @classmethod
    def from_dict(cls, raw: Fields) -> SettingProfile:
        median = raw.numbers_or_none("median")
        return cls(raw.text("facility"), raw.text("item"), raw.integer("cluster"), raw.integer("rows"), median,
                   raw.numbers("setting_centroid"), raw.number("setting_radius"), Band.from_dict(raw.child("band"), len(median)))

    def to_dict(self) -> dict[str, Any]:
        return {"facility": self.facility, "item": self.item, "cluster": self.cluster, "rows": self.rows,
                "median": _list(self.median), "setting_centroid": _list(self.setting_centroid),
                "setting_radius": self.setting_radius, "band": self.band.to_dict()}


# -- lot calibration (model_store/calibration.py, model_store/history_scoring.py) -------------------
@dataclass(frozen=True)
class CalibrationUnit:
    """The matched line factor of the records one group judges through one resolution path."""

    group_id: str
    path: str
    factor: float
    rows: int
    expected_bad: float
    history_alarms: int
    history_excursions: int

    @classmethod
    def from_dict(cls, raw: Fields) -> CalibrationUnit:
        return cls(raw.text("group_id"), raw.text("path"), raw.number("factor"), raw.integer("rows"),
                   raw.number("expected_bad"), raw.integer("history_alarms"), raw.integer("history_excursions"))

    def to_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "path": self.path, "factor": self.factor, "rows": self.rows,
                "expected_bad": self.expected_bad, "history_alarms": self.history_alarms,
                "history_excursions": self.history_excursions}


@dataclass(frozen=True)
class PathUse:
    """Whether a resolution path is used, and the history behind the decision."""

    used: bool
    rows: int
    evidence: float | None  # likelihood-ratio statistic; None: not tested (a record's own group or part)

    @classmethod
    def from_dict(cls, raw: Fields) -> PathUse:
        return cls(raw.flag("used"), raw.integer("rows"), raw.optional_number("evidence"))

    def to_dict(self) -> dict[str, Any]:
        return {"used": self.used, "rows": self.rows, "evidence": self.evidence}


@dataclass(frozen=True)
class Calibration:
    method: str
    units: tuple[CalibrationUnit, ...]
    path_factor: dict[str, float]  # path -> typical factor, for units with too little history
    probability: dict[str, tuple[float, float]]  # path -> (intercept, slope) of defect_probability
    paths: dict[str, PathUse]
    unscorable_rows: int
    min_evidence: float

    @classmethod
    def from_dict(cls, raw: Fields) -> Calibration:
        path_factor = raw.child("path_factor")
        probability = raw.child("probability")
        coefficients = {k: probability.numbers(k, 2) for k in probability.raw}
        return cls(
            method=raw.text("method"),
            units=tuple(CalibrationUnit.from_dict(u) for u in raw.objects("units")),
            path_factor={k: path_factor.number(k) for k in path_factor.raw},
            probability={k: (v[0], v[1]) for k, v in coefficients.items()},
            paths={k: PathUse.from_dict(v) for k, v in raw.children("paths").items()},
            unscorable_rows=raw.integer("unscorable_rows"),
            min_evidence=raw.number("min_evidence"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "units": [u.to_dict() for u in self.units], "path_factor": dict(self.path_factor),
                "probability": {k: list(v) for k, v in self.probability.items()},
                "paths": {k: v.to_dict() for k, v in self.paths.items()}, "unscorable_rows": self.unscorable_rows,
                "min_evidence": self.min_evidence}

    def path_used(self, path: str) -> bool:
        """A path the calibration did not list is used (it had no history to judge it by)."""
        use = self.paths.get(path)
        return True if use is None else use.used


# -- the setting-conditioned scorer (model_store/serving/conditional.py) ----------------------------
@dataclass(frozen=True)
class UnitLine:
    """One calibration unit's line (a part key, or the maker's fallback); its scores are in the artifact."""

    unit: str
    line: float
    alpha: float
    rows: int | None

    @classmethod
    def from_dict(cls, raw: Fields) -> UnitLine:
        return cls(raw.text("unit"), raw.number("line"), raw.number("alpha"), raw.optional_integer("rows"))

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "line": self.line, "alpha": self.alpha,
                **({"rows": self.rows} if self.rows is not None else {})}


@dataclass(frozen=True)
class ConditionalUnitEntry:
    """One maker's setting-conditioned unit: what ``ConditionalUnit.to_files`` records beside its arrays."""

    maker: str
    features: tuple[str, ...]
    settings: tuple[str, ...]
    parts: tuple[str, ...]
    quadratic: bool
    raw_tables: tuple[str, ...]  # part keys, in the order of the artifact's raw{i}_ arrays
    residual_tables: tuple[str, ...]
    calibration: tuple[UnitLine, ...]
    artifact: str  # the .npz in the store
    excursion_share: float = LEGACY_EXCURSION_SHARE
    residual_evidence: str = LEGACY_RESIDUAL_EVIDENCE
    raw_weight: float = LEGACY_RAW_WEIGHT
    baseline_halflife: float = LEGACY_BASELINE_HALFLIFE
    baseline_clip: float = LEGACY_BASELINE_CLIP
    baseline_parts: tuple[str, ...] = ()
    lasting_ratio: float = LEGACY_LASTING_RATIO
    follow_new_settings: bool = LEGACY_FOLLOW_NEW_SETTINGS
    follow_new_parts: bool = LEGACY_FOLLOW_NEW_PARTS
    lasting_at_line: bool = LEGACY_LASTING_AT_LINE
    baseline_shift_run: int = LEGACY_BASELINE_SHIFT_RUN
    neighbour_tables: tuple[str, ...] = ()
    setting_range_parts: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Fields) -> ConditionalUnitEntry:
        residual_evidence = raw.text("residual_evidence", LEGACY_RESIDUAL_EVIDENCE)
        if residual_evidence not in ("tails", "squares", "both"):
            raw.refuse(raw.name("residual_evidence"), f"must be tails, squares or both, got {residual_evidence!r}")
        return cls(
            maker=raw.text("maker"), features=raw.texts("features"), settings=raw.texts("settings"), parts=raw.texts("parts"),
            quadratic=raw.flag("quadratic"), raw_tables=raw.texts("raw_tables"), residual_tables=raw.texts("residual_tables"),
            calibration=tuple(UnitLine.from_dict(c) for c in raw.objects("calibration")), artifact=raw.text("artifact"),
            excursion_share=raw.number("excursion_share", LEGACY_EXCURSION_SHARE), residual_evidence=residual_evidence,
            raw_weight=raw.number("raw_weight", LEGACY_RAW_WEIGHT),
            baseline_halflife=raw.number("baseline_halflife", LEGACY_BASELINE_HALFLIFE),
            baseline_clip=raw.number("baseline_clip", LEGACY_BASELINE_CLIP), baseline_parts=raw.texts("baseline_parts", ()),
            lasting_ratio=raw.number("lasting_ratio", LEGACY_LASTING_RATIO),
            follow_new_settings=raw.flag("follow_new_settings", LEGACY_FOLLOW_NEW_SETTINGS),
            follow_new_parts=raw.flag("follow_new_parts", LEGACY_FOLLOW_NEW_PARTS),
            lasting_at_line=raw.flag("lasting_at_line", LEGACY_LASTING_AT_LINE),
            baseline_shift_run=raw.integer("baseline_shift_run", LEGACY_BASELINE_SHIFT_RUN),
            neighbour_tables=raw.texts("neighbour_tables", ()), setting_range_parts=raw.texts("setting_range_parts", ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "maker": self.maker, "features": _list(self.features), "settings": _list(self.settings), "parts": _list(self.parts),
            "quadratic": self.quadratic, "raw_tables": _list(self.raw_tables), "residual_tables": _list(self.residual_tables),
            "excursion_share": self.excursion_share, "residual_evidence": self.residual_evidence, "raw_weight": self.raw_weight,
            "baseline_halflife": self.baseline_halflife, "baseline_clip": self.baseline_clip,
            "baseline_parts": _list(self.baseline_parts), "lasting_ratio": self.lasting_ratio,
            "follow_new_settings": self.follow_new_settings, "follow_new_parts": self.follow_new_parts,
            "lasting_at_line": self.lasting_at_line, "baseline_shift_run": self.baseline_shift_run,
            "neighbour_tables": _list(self.neighbour_tables),
            "setting_range_parts": _list(self.setting_range_parts), "calibration": [c.to_dict() for c in self.calibration],
            "artifact": self.artifact,
        }


@dataclass(frozen=True)
class ConditionalProbabilityEntry:
    """The conditional scorer's defect probability beyond ``sigmoid(a + b log score)`` (see
    :class:`model_store.serving.probability.ConditionalProbability`)."""

    excursion_intercept: float | None = None
    base_rate: float | None = None
    blend: float = LEGACY_PROBABILITY_BLEND

    @classmethod
    def from_dict(cls, raw: Fields) -> ConditionalProbabilityEntry:
        return cls(raw.optional_number("excursion_intercept"), raw.optional_number("base_rate"),
                   raw.number("blend", LEGACY_PROBABILITY_BLEND))

    def to_dict(self) -> dict[str, Any]:
        return {"excursion_intercept": self.excursion_intercept, "base_rate": self.base_rate, "blend": self.blend}


@dataclass(frozen=True)
class ConditionalSection:
    """The setting-conditioned scorer of a store; an empty one (no units) leaves the groups alone."""

    combine: str = LEGACY_COMBINE  # how its verdict meets the setting groups': one of COMBINE_RULES
    group_excursions: bool = LEGACY_GROUP_EXCURSIONS
    units: dict[str, ConditionalUnitEntry] = field(default_factory=dict)  # maker -> unit
    probability: tuple[float, float] | None = None  # (a, b); None: no defect probability
    probability_model: ConditionalProbabilityEntry | None = None
    held_out_rows: int | None = None  # report figures
    held_out_excursions: int | None = None

    @classmethod
    def from_dict(cls, raw: Fields) -> ConditionalSection:
        combine = raw.text("combine", LEGACY_COMBINE)
        if combine not in COMBINE_RULES:
            raw.refuse(raw.name("combine"), f"must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
        probability = raw.numbers("probability", 2) if raw.has("probability") else None
        return cls(
            combine=combine,
            group_excursions=raw.flag("group_excursions", LEGACY_GROUP_EXCURSIONS),
            units={maker: ConditionalUnitEntry.from_dict(unit) for maker, unit in raw.children("units", {}).items()},
            probability=None if probability is None else (probability[0], probability[1]),
            probability_model=(ConditionalProbabilityEntry.from_dict(raw.child("probability_model"))
                               if raw.has("probability_model") else None),
            held_out_rows=raw.optional_integer("held_out_rows"),
            held_out_excursions=raw.optional_integer("held_out_excursions"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"combine": self.combine, "group_excursions": self.group_excursions,
                               "units": {m: u.to_dict() for m, u in self.units.items()},
                               "probability": None if self.probability is None else list(self.probability)}
        if self.probability_model is not None:
            out["probability_model"] = self.probability_model.to_dict()
        for name in ("held_out_rows", "held_out_excursions"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


NO_CONDITIONAL = ConditionalSection()


# -- the training configuration the store was made with -------------------------------------------
_CONFIG_SECTIONS: dict[str, type] = {"grouping": GroupingConfig, "model": ModelConfig, "threshold": ThresholdConfig,
                                     "conditional": ConditionalConfig, "drift": DriftReferenceConfig}


def config_from_dict(raw: Fields) -> TrainingConfig:
    """The recorded configuration; a setting absent from it (a store from before the setting) reads
    as its default, a setting no longer known is ignored (only the report shows them)."""
    sections: dict[str, Any] = {}
    for name, kind in _CONFIG_SECTIONS.items():
        if name not in raw.raw:
            sections[name] = kind()
            continue
        section = raw.child(name)
        values: dict[str, Any] = {}
        for setting in fields(kind):
            if setting.name not in section.raw:
                continue
            default = getattr(kind(), setting.name)
            if isinstance(default, bool):
                values[setting.name] = section.flag(setting.name)
            elif isinstance(default, int):
                values[setting.name] = section.integer(setting.name)
            elif isinstance(default, float):
                values[setting.name] = section.number(setting.name)
            else:
                values[setting.name] = section.text(setting.name)
        try:
            sections[name] = kind(**values)
        except ValueError as exc:
            section.refuse(section.path, f"is not a valid configuration ({exc})")
    return TrainingConfig(workers=raw.integer("workers", 0), **sections)


# -- the manifest ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a store, as written by training."""

    store_format: int
    model_version: str
    schema_hash: str
    schema: dict[str, Any]  # parsed by model_store.schema.parse_schema (model_store/serving/store.py)
    setting_models: dict[str, Any]  # maker -> SettingModel.to_dict()
    groups: tuple[GroupEntry, ...]
    artifacts: dict[str, str]  # path in the store -> sha256
    config: TrainingConfig | None = None  # None: the manifest recorded none (see effective_config)
    created_at: str | None = None
    facility_maker: dict[str, str] = field(default_factory=dict)
    facility_defaults: dict[str, FacilityDefaults] = field(default_factory=dict)
    setting_profiles: dict[str, tuple[SettingProfile, ...]] = field(default_factory=dict)  # maker -> profiles
    conditional: ConditionalSection | None = None
    calibration: Calibration | None = None  # None: prior lines (a store being calibrated)
    # Kept as JSON (see the module's docstring); None where a store has none.
    setting_clusters: dict[str, Any] | None = None
    group_table: list[Any] | None = None
    training: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> Manifest:
        """Parse and check a manifest; ``source`` (the file) opens every refusal."""
        found = raw.get("store_format") if isinstance(raw, Mapping) else None
        if type(found) is not int or found != STORE_FORMAT:  # not True, 4.0 or "4": the writer writes the integer
            known = FORMAT_HISTORY.get(found) if type(found) is int else None
            reads = f"this moldwatch reads format {STORE_FORMAT} ({FORMAT_HISTORY[STORE_FORMAT]})"
            older = bool(known) and found is not None and found < STORE_FORMAT
            detail = (f"Format {found} ({known}) was written by an older moldwatch; {reads}." if older
                      else f"The manifest has no store_format; {reads}." if found is None
                      else f"It was written by another moldwatch; {reads}.")
            raise StoreError(f"{source}: store format {found!r} is not supported (expected {STORE_FORMAT}); {RETRAIN}. {detail}")
        top = Fields(raw, source)
        for key in ("schema", "setting_models", "artifacts"):
            top.child(key)  # present, and objects
        artifacts = top.child("artifacts")
        group_table = top.raw.get("group_table")
        if group_table is not None and not isinstance(group_table, list):
            top.refuse("group_table", f"must be a list, got {kind_of(group_table)}")
        return cls(
            store_format=STORE_FORMAT,
            model_version=top.text("model_version"),
            schema_hash=top.text("schema_hash"),
            schema=top.raw["schema"],
            setting_models=top.raw["setting_models"],
            groups=tuple(GroupEntry.from_dict(g) for g in top.objects("groups")),
            artifacts={k: artifacts.text(k) for k in artifacts.raw},
            config=config_from_dict(top.child("config")) if "config" in top.raw else None,
            created_at=top.optional_text("created_at"),
            facility_maker=({k: v.text(k) for v in [top.child("facility_maker")] for k in v.raw}
                            if "facility_maker" in top.raw else {}),
            facility_defaults={k: FacilityDefaults.from_dict(v) for k, v in top.children("facility_defaults", {}).items()},
            setting_profiles=({maker: tuple(SettingProfile.from_dict(p) for p in profiles.objects(maker))
                               for profiles in [top.child("setting_profiles")] for maker in profiles.raw}
                              if "setting_profiles" in top.raw else {}),
            conditional=ConditionalSection.from_dict(top.child("conditional")) if "conditional" in top.raw else None,
            calibration=Calibration.from_dict(top.child("calibration")) if top.has("calibration") else None,
            setting_clusters=top.json_object("setting_clusters"),
            group_table=group_table,
            training=top.json_object("training"),
            history=top.json_object("history"),
            drift=top.json_object("drift"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store_format": self.store_format, "model_version": self.model_version}
        if self.created_at is not None:
            out["created_at"] = self.created_at
        out.update(schema_hash=self.schema_hash, schema=self.schema)
        if self.config is not None:
            out["config"] = self.config.to_dict()
        out["setting_models"] = self.setting_models
        out["facility_maker"] = dict(self.facility_maker)
        out["facility_defaults"] = {k: v.to_dict() for k, v in self.facility_defaults.items()}
        out["setting_profiles"] = {m: [p.to_dict() for p in ps] for m, ps in self.setting_profiles.items()}
        optional: dict[str, Any] = {
            "setting_clusters": self.setting_clusters,
            "groups": [g.to_dict() for g in self.groups],
            "group_table": self.group_table,
            "training": self.training,
            "conditional": None if self.conditional is None else self.conditional.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "history": self.history,
            "drift": self.drift,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out["artifacts"] = dict(self.artifacts)
        return out

    @property
    def effective_config(self) -> TrainingConfig:
        """The configuration the store was made with (training's defaults where it recorded none)."""
        return self.config if self.config is not None else TrainingConfig()

    def group(self, group_id: str) -> GroupEntry | None:
        return self._groups_by_id.get(group_id)

    @cached_property
    def _groups_by_id(self) -> dict[str, GroupEntry]:
        return {g.id: g for g in self.groups}
