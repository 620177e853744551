"""The scoring core, shared by ``moldwatch score``, ``recipe``, the benchmarks and the worker.

impute state -> setting cluster -> resolve group -> impute production -> scale (clip) -> loss
-> lot-calibrated line -> score = max(loss / line, worst excursion ratio; a lasting one just above 1) -> anomaly = score > 1
-> defect probability. Vectorised per group; returns arrays (:class:`ScoredBatch`), and
:func:`model_store.serving.verdict.to_verdicts` turns them into verdict objects.
"""
from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from model_store.errors import StoreError
from model_store.serving.clusters import assign_clusters, scale_settings
from model_store.serving.columns import RecordColumns
from model_store.serving.conditional import CONDITIONAL, FALLBACK, ConditionalUnit, part_keys
from model_store.serving.excursions import excursion_ratios, excursion_tolerance
from model_store.serving.group_cache import GroupCache, RuntimeGroup
from model_store.serving.imputation import FacilityMemory, impute_columns
from model_store.serving.probability import ConditionalProbability, ProbabilityModel
from model_store.serving.resolution import ALIGNED_PATHS, EXACT, ITEM, MAKER, NEAREST, PART, PATHS, UNSCORABLE, MakerIndex, resolve
from model_store.serving.store import MANIFEST, StoreManifest
from model_store.serving.store_format import (
    NO_CONDITIONAL,
    Calibration,
    ConditionalProbabilityEntry,
    FacilityDefaults,
    GroupEntry,
)
from model_store.serving.thresholds import decide, effective_thresholds

TOP_FEATURES = 3
# A setting profile describes records whose set points lie within this many times its own 95th
# percentile spread (floored, for profiles of one exact combination): beyond that the record runs
# a different setting that merely fell into the same cluster, and aligning it would be wrong.
PROFILE_REACH = 1.5
PROFILE_MIN_RADIUS = 0.02
NO_FACILITY_DEFAULTS = FacilityDefaults(item=None)  # a facility history never saw


# Why a record could not be judged: a short cause (a metric label) and the text a verdict carries.
UNSCORABLE_CAUSES = {
    "unknown_maker": "no trained model for this maker (or unknown facility with no maker)",
    "unknown_state": "item and setting fields unknown, and no history to impute them from",
    "no_settings": "setting fields unknown and this part has no pooled model to judge it without them",
    "no_model_for_part": (
        "no trained model for this facility and item, and this setting has no history to align it with "
        "another part's model; retrain the store with recent production"),
    "no_group_near": "no trained group near this setting",
    "insufficient_evidence": "too few production values measured",
    "broken_model": "this setting group's model file cannot be loaded (the store's other groups keep judging); "
                    "publish a good store",
}


def unscorable_cause(reason: str | None) -> str:
    """The short cause of an unscorable verdict's reason text ('other' for a reason not listed):
    for verdicts read back from Kafka or files. The scoring core carries the cause itself
    (:attr:`ScoredBatch.cause`), so the worker never parses its own text."""
    for cause, text in UNSCORABLE_CAUSES.items():
        if reason and reason.startswith(text):
            return cause
    return "other"


@dataclass
class ScoredBatch:
    """Per-record results as parallel arrays (row order = input order)."""

    maker: np.ndarray
    facility: np.ndarray
    item: np.ndarray
    cluster: np.ndarray
    group_id: np.ndarray
    resolution: np.ndarray
    distance: np.ndarray
    model_kind: np.ndarray
    loss: np.ndarray
    threshold: np.ndarray
    margin: np.ndarray
    score: np.ndarray
    anomaly: np.ndarray
    excursion: np.ndarray  # worst excursion ratio (> 1: a gross excursion), NaN when unscored
    measured_share: np.ndarray  # share of the judging group's production fields that were measured
    defect_probability: np.ndarray  # lot-calibrated, NaN when unscored or not calibrated
    prior_ratio: np.ndarray  # loss / prior (uncalibrated) line: what the lot calibration matches
    imputed: list[list[str]]
    out_of_range: list[list[str]]
    top_features: list[list[dict[str, Any]]]
    reason: np.ndarray
    # What the judging evidence rests on: "part" (the part's own history: its tables and line),
    # "maker" (the maker's: a part, or a machine-part pairing, with too little history of its own),
    # "group" (a setting group decided); None when unscored. A plant engineer reads how far to trust it.
    basis: np.ndarray | None = None
    # The alarm line on score: 1 as trained; a part's feedback line where a line book raised it
    # (model_store.serving.line_book.apply_lines), with that book's version (0: none applied).
    line: np.ndarray | None = None
    line_version: int = 0
    # Why a record is unscorable, as a key of UNSCORABLE_CAUSES (a metric label); None when judged.
    # Set with ``reason`` by :meth:`unscorable` only, so the two never disagree.
    cause: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.basis is None:
            self.basis = np.full(len(self.loss), None, dtype=object)
        if self.line is None:
            self.line = np.ones(len(self.loss))
        if self.cause is None:
            self.cause = np.full(len(self.loss), None, dtype=object)

    def unscorable(self, rows: np.ndarray, cause: str, detail: str = "") -> None:
        """Say why ``rows`` cannot be judged: the cause's text (then ``detail``) as the reason."""
        assert self.cause is not None  # filled by __post_init__
        self.reason[rows] = UNSCORABLE_CAUSES[cause] + detail
        self.cause[rows] = cause

    def judged(self, rows: np.ndarray) -> None:
        """``rows`` were judged after all: no reason, no cause."""
        assert self.cause is not None  # filled by __post_init__
        self.reason[rows] = None
        self.cause[rows] = None

    def __len__(self) -> int:
        return len(self.loss)


BASELINE_MEMORY = ("conditional", "baselines")  # not a str: no facility name can be this key
MAX_REMEMBERED_PARTS = 100_000  # per store version and maker: a stream of made-up items cannot grow memory without end


# The running baselines ride in the facility memory under a key no facility can have (a tuple), so
# their type is stated here, where they are read and written, rather than in FacilityMemory.
BaselineSlot = dict[tuple[str, str], dict[str, np.ndarray]]


def _carried(memory: FacilityMemory) -> BaselineSlot:
    slot: BaselineSlot = cast("MutableMapping[Any, Any]", memory).get(BASELINE_MEMORY, {})
    return slot


def baselines(memory: FacilityMemory | None, state_key: tuple[str, str]) -> dict[str, np.ndarray] | None:
    """The running baselines this stream carries for one store version's maker (None: none yet)."""
    if memory is None:
        return None
    return _carried(memory).get(state_key)


def remember_baselines(memory: FacilityMemory, state_key: tuple[str, str], end: dict[str, np.ndarray]) -> None:
    """Carry the parts' baselines to the next batch. Dictionaries are replaced, never changed in
    place, so a shallow copy of the memory (POST /score) cannot move the stream's baselines; a
    new store version's baselines replace the old one's (whose residuals meant something else)."""
    carried = _carried(memory)
    parts = dict(carried.get(state_key, {}))
    for key, value in end.items():
        parts.pop(key, None)  # re-inserted last: the parts seen longest ago are dropped first
        parts[key] = value
    if len(parts) > MAX_REMEMBERED_PARTS:
        parts = dict(list(parts.items())[len(parts) - MAX_REMEMBERED_PARTS:])
    kept = {k: v for k, v in carried.items() if k[0] == state_key[0] and k != state_key}
    cast("MutableMapping[Any, Any]", memory)[BASELINE_MEMORY] = {**kept, state_key: parts}


def _empty_batch(n: int) -> ScoredBatch:
    return ScoredBatch(
        maker=np.full(n, None, dtype=object),
        facility=np.full(n, None, dtype=object),
        item=np.full(n, None, dtype=object),
        cluster=np.full(n, -1, dtype=np.int64),
        group_id=np.full(n, None, dtype=object),
        resolution=np.full(n, UNSCORABLE, dtype=object),
        distance=np.full(n, np.nan),
        model_kind=np.full(n, None, dtype=object),
        loss=np.full(n, np.nan),
        threshold=np.full(n, np.nan),
        margin=np.full(n, np.nan),
        score=np.full(n, np.nan),
        anomaly=np.zeros(n, dtype=bool),
        excursion=np.full(n, np.nan),
        measured_share=np.full(n, np.nan),
        defect_probability=np.full(n, np.nan),
        prior_ratio=np.full(n, np.nan),
        imputed=[[] for _ in range(n)],
        out_of_range=[[] for _ in range(n)],
        top_features=[[] for _ in range(n)],
        reason=np.full(n, None, dtype=object),
    )


class Columns:
    """One maker's rows of a batch: each column taken once, each numeric one converted once."""

    def __init__(self, arrays: RecordColumns, rows: np.ndarray):
        self._arrays = arrays
        self.rows = rows
        self._taken: dict[str, np.ndarray] = {}
        self._numbers: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, name: str) -> bool:
        return name in self._taken or name in self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._taken:
            self._taken[name] = self._arrays[name][self.rows]
        return self._taken[name]

    def replace(self, name: str, values: np.ndarray) -> None:
        self._taken[name] = values
        self._numbers.pop(name, None)

    def numbers(self, name: str) -> np.ndarray:
        """The column as floats (NaN for a column the batch does not have)."""
        if name not in self._numbers:
            self._numbers[name] = np.asarray(self[name], dtype=float) if name in self else np.full(len(self), np.nan)
        return self._numbers[name]

    def matrix(self, names: tuple[str, ...] | list[str], local: np.ndarray | None = None) -> np.ndarray:
        """(rows, names) floats, of the rows ``local`` (positions among these rows) or all."""
        if not names:
            return np.zeros((len(self) if local is None else len(local), 0))
        columns = [self.numbers(n) for n in names]
        return np.column_stack(columns if local is None else [c[local] for c in columns])



class ScoringEngine:
    """Scores canonical record frames against one verified store.

    ``calibrated=False`` ignores the store's lot calibration (prior lines, every path): the
    training pipeline scores history that way to fit the calibration in the first place.
    """

    def __init__(
        self, manifest: StoreManifest, cache_size: int = 2048, max_distance: float | None = None, calibrated: bool = True,
        paths: tuple[str, ...] | None = None, conditional: bool = True,
    ):
        self.manifest = manifest
        self.schema = manifest.schema
        self.model_version = manifest.model_version
        self.cache = GroupCache(manifest, capacity=cache_size)
        self.broken_groups: dict[str, str] = {}  # group id -> why its model file cannot be loaded
        self.max_distance = max_distance
        contents = manifest.contents
        by_maker: dict[str, list[GroupEntry]] = {m: [] for m in manifest.setting_models}
        for entry in contents.groups:
            by_maker.setdefault(entry.key.maker, []).append(entry)
        self.index = {
            maker: MakerIndex.build(entries, len(manifest.setting_models[maker].fields))
            for maker, entries in by_maker.items()
            if maker in manifest.setting_models
        }
        self.facility_maker: dict[str, str] = contents.facility_maker
        self.profiles: dict[tuple[str, str, int], np.ndarray] = {}
        self.profile_reach: dict[tuple[str, str, int], tuple[np.ndarray, float]] = {}
        self.profile_band: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
        for profiles in contents.setting_profiles.values():
            for p in profiles:
                key = (p.facility, p.item, p.cluster)
                self.profiles[key] = np.array([np.nan if v is None else v for v in p.median], dtype=float)
                reach = PROFILE_REACH * max(p.setting_radius, PROFILE_MIN_RADIUS)
                self.profile_reach[key] = (np.asarray(p.setting_centroid, dtype=float), reach)
                self.profile_band[key] = (np.asarray(p.band.low, dtype=float), np.asarray(p.band.high, dtype=float))
        self.defaults: dict[str, FacilityDefaults] = contents.facility_defaults
        self.max_imputed_share = contents.effective_config.threshold.max_imputed_share
        calibration = contents.calibration if calibrated else None
        self.calibration: Calibration | None = calibration
        self.enabled_paths: tuple[str, ...] = PATHS
        self.unit_factor: dict[tuple[str, str], float] = {}
        self.path_factor: dict[str, float] = {}
        self.probability: ProbabilityModel | None = None
        if calibration:
            self.enabled_paths = tuple(p for p in PATHS if calibration.path_used(p))
            self.unit_factor = {(u.group_id, u.path): u.factor for u in calibration.units}
            self.path_factor = dict(calibration.path_factor)
            self.probability = ProbabilityModel(dict(calibration.probability), {}, 0.0)
        if paths is not None:
            self.enabled_paths = tuple(p for p in PATHS if p in paths)
        # The setting-conditioned scorer (one unit per maker); ``conditional=False`` leaves the
        # setting groups alone, as the group calibration needs them.
        section = (contents.conditional or NO_CONDITIONAL) if conditional else NO_CONDITIONAL
        self.combine: str = section.combine
        self.group_excursions: bool = section.group_excursions
        self.conditional_units: dict[str, ConditionalUnit] = {
            maker: ConditionalUnit.from_files(entry, manifest.artifact(entry.artifact))
            for maker, entry in section.units.items()
        }
        extra = section.probability_model or ConditionalProbabilityEntry()
        self.conditional_probability_model: ConditionalProbability | None = (
            ConditionalProbability(section.probability[0], section.probability[1], extra.excursion_intercept, extra.base_rate,
                                   extra.blend)
            if section.probability else None)

    def group(self, group_id: str) -> RuntimeGroup:
        return self.cache.get(group_id)

    # -- state ---------------------------------------------------------------------------------
    def _makers(self, records: RecordColumns) -> np.ndarray:
        """Each record's maker: its own, else its facility's (a maker column may be blank)."""
        maker = np.array(records["maker"], dtype=object, copy=True)
        missing = pd.isna(maker)
        if missing.any():
            facility = records["facility"]
            maker[missing] = [self.facility_maker.get(f, np.nan) if isinstance(f, str) else np.nan for f in facility[missing]]
        return maker

    def _store_replaced(self) -> bool:
        """Whether the store on disk is no longer the one this engine serves (another version, or
        none): then a file that fails to load is the replacement's doing, not a broken group."""
        try:
            with open(self.manifest.root / MANIFEST, "rb") as fh:
                on_disk = json.load(fh).get("model_version")
        except (OSError, ValueError, AttributeError):
            return True
        return cast(bool, on_disk != self.manifest.model_version)

    def _default_state(self, facility: str, item: Any, fields: tuple[str, ...]) -> tuple[Any, np.ndarray | None]:
        facility_defaults = self.defaults.get(str(facility), NO_FACILITY_DEFAULTS)
        item = item if isinstance(item, str) else facility_defaults.item
        combo = (facility_defaults.settings_by_item or {}).get(item) or facility_defaults.settings
        return item, (np.asarray(combo, dtype=float) if combo is not None and len(combo) == len(fields) else None)

    def line_factors(self, group_id: str, path: np.ndarray) -> np.ndarray:
        """Lot-calibrated factor on the group's prior base, per record (1 without calibration)."""
        factors = np.ones(len(path))
        if not self.calibration:
            return factors
        for name in np.unique(path):
            factor = self.unit_factor.get((group_id, name), self.path_factor.get(name, 1.0))
            factors[path == name] = factor
        return factors

    def _profiled(self, facility: np.ndarray, item: np.ndarray, cluster: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """Rows whose own setting has a history profile that really describes them."""
        out = np.zeros(len(facility), dtype=bool)
        found = [self.profile_reach.get(key) for key in zip(facility.tolist(), item.tolist(), cluster.tolist())]
        rows = np.array([r for r, reach in enumerate(found) if reach is not None], dtype=np.int64)
        if len(rows):
            centroid = np.array([found[r][0] for r in rows], dtype=float)
            radius = np.array([found[r][1] for r in rows], dtype=float)
            x = scaled[rows]
            distance = np.sqrt(((x - centroid) ** 2).sum(axis=1))
            out[rows] = ~np.isnan(x).any(axis=1) & (distance <= radius)
        return out

    def _alignment(
        self, group: RuntimeGroup, path: np.ndarray, profiled: np.ndarray, facility: np.ndarray, item: np.ndarray,
        cluster: np.ndarray,
    ) -> np.ndarray | None:
        """Shift that moves a record judged by another group into that group's frame.

        A setting (and a machine) shifts every production value; that is why groups exist. When
        the record's own setting has a history profile, its median is replaced by the judging
        group's training median, so the model judges the record's deviation from *its own* normal,
        not the distance between two settings or processes. Resolution sends only profiled records
        down these paths (item, maker). The part's pooled model already spans the part's settings,
        and a sibling setting's model is judged with the distance weight instead.
        """
        rows = np.flatnonzero(np.isin(path, ALIGNED_PATHS) & profiled)
        if len(rows) == 0:
            return None
        shift = np.zeros((len(path), len(group.features)))
        for i in rows:
            shift[i] = np.nan_to_num(group.median_raw - self.profiles[(facility[i], item[i], int(cluster[i]))])
        return shift

    # -- scoring -------------------------------------------------------------------------------
    def score(
        self, records: pd.DataFrame | RecordColumns, memory: FacilityMemory | None = None, backward: bool = True,
        explain: bool = True,
    ) -> ScoredBatch:
        """Score canonical records (a frame, see :func:`model_store.canonical.canonical_records`, or
        the decoder's columns).

        ``memory`` carries each facility's last known item and settings, and each part's running
        residual baseline, across calls (online);
        ``backward`` also fills gaps from later rows of the same batch (offline history);
        ``explain=False`` skips the per-record field lists (imputed, out_of_range, top_features),
        for bulk scoring that only needs the numbers (calibration, figures).
        """
        columns = RecordColumns.of(records)
        n = columns.rows
        out = _empty_batch(n)
        if n == 0:
            return out
        maker = self._makers(columns)
        out.facility[:] = columns["facility"]
        out.maker[:] = maker
        known = np.array([isinstance(m, str) and m in self.index for m in maker.tolist()], dtype=bool)
        out.unscorable(~known, "unknown_maker")
        for name, index in self.index.items():
            rows = np.flatnonzero(maker == name)
            if len(rows):
                self._score_maker(name, index, Columns(columns, rows), rows, out, memory, backward, explain)
        return out

    def _score_maker(
        self,
        maker: str,
        index: MakerIndex,
        sub: Columns,
        rows: np.ndarray,
        out: ScoredBatch,
        memory: FacilityMemory | None,
        backward: bool,
        explain: bool = True,
    ) -> None:
        setting_model = self.manifest.setting_models[maker]
        fields = setting_model.fields
        state_columns = ["item", *fields]
        facility = np.asarray(sub["facility"]).astype(str).astype(object)
        given = {c: sub[c] for c in state_columns if c in sub}
        state, imputed_state = impute_columns(facility, sub["timestamp"], given, state_columns, {}, memory=memory, backward=backward)
        for column in state_columns:
            sub.replace(column, state[column])
        item = np.array(state["item"], dtype=object, copy=True)  # filled below: must be writable
        settings = sub.matrix(fields).copy()
        # Last resort for a facility seen with no history at all: its usual item and setting.
        gaps = np.flatnonzero(pd.isna(item) | np.isnan(settings).any(axis=1))
        for r in gaps:
            default_item, default_combo = self._default_state(facility[r], item[r], fields)
            if pd.isna(item[r]) and default_item is not None:
                item[r] = default_item
                imputed_state[r, 0] = True
            if default_combo is not None:
                holes = np.isnan(settings[r])
                settings[r, holes] = default_combo[holes]
                imputed_state[r, 1:] |= holes
        out.item[rows] = item
        scaled = scale_settings(settings, setting_model)
        known = ~np.isnan(scaled).any(axis=1)
        cluster = np.full(len(rows), -1, dtype=np.int64)
        cluster[known] = assign_clusters(scaled[known], setting_model.centroids)
        out.cluster[rows] = cluster
        profiled = self._profiled(facility, item, cluster, scaled)
        resolution = resolve(index, facility, item, cluster, scaled, self.max_distance, profiled, self.enabled_paths)
        out.resolution[rows] = resolution.path
        out.distance[rows] = resolution.distance
        unscorable = resolution.group < 0
        has_item = np.array([isinstance(v, str) for v in item], dtype=bool)
        out.unscorable(rows[unscorable & ~known & ~has_item], "unknown_state")
        out.unscorable(rows[unscorable & ~known & has_item], "no_settings")
        out.unscorable(rows[unscorable & known & ~profiled], "no_model_for_part")
        out.unscorable(rows[unscorable & known & profiled], "no_group_near")

        for r in np.flatnonzero(imputed_state.any(axis=1)) if explain else ():  # most records have no gap
            out.imputed[rows[r]] = [state_columns[j] for j in np.flatnonzero(imputed_state[r])]
        unit = self.conditional_units.get(maker)
        with_model = unit is None or self.combine != "conditional"
        # Where the conditional scorer decides and the groups' bands do not alarm, a setting group
        # only names the setting (its model is never loaded).
        naming_only = unit is not None and self.combine == "conditional" and not self.group_excursions
        for g in np.unique(resolution.group[~unscorable]):
            local = np.flatnonzero(resolution.group == g)
            group_id = str(index.group_ids[g])
            if naming_only:
                out.group_id[rows[local]] = group_id
                continue
            try:
                group = self.cache.get(group_id)
            except StoreError as exc:
                if self._store_replaced():
                    raise  # the whole store changed under the engine: the worker reloads it and retries
                # One bad file is that group's problem: its records are unscorable (the conditional
                # scorer below still judges them where it can), every other group keeps judging.
                self.broken_groups[group_id] = str(exc)
                out.resolution[rows[local]] = UNSCORABLE
                out.unscorable(rows[local], "broken_model", f": group {group_id}")
                out.group_id[rows[local]] = group_id
                continue
            self._judge(group, local, rows, sub, resolution, profiled, facility, item, cluster, out, explain, with_model)
        if unit is not None:
            self._judge_conditional(unit, sub, settings, facility, item, rows, out, explain, memory)

    def _judge_conditional(
        self, unit: ConditionalUnit, sub: Columns, settings: np.ndarray, facility: np.ndarray, item: np.ndarray,
        rows: np.ndarray, out: ScoredBatch, explain: bool, memory: FacilityMemory | None = None,
    ) -> None:
        """The setting-conditioned verdict of one maker's records (see :mod:`model_store.serving.conditional`).

        Every record with enough measured production values is judged, whatever its setting or
        part; ``combine`` says how this meets the setting groups' verdicts. The parts' running
        baselines continue from ``memory`` (online) or from the end of the store's history.
        """
        production = sub.matrix(unit.features)
        measured = ~np.isnan(production)
        share = measured.mean(axis=1) if production.shape[1] else np.zeros(len(rows))
        evidence_ok = share >= 1.0 - self.max_imputed_share - 1e-12
        grouped = out.resolution[rows] != UNSCORABLE
        if self.combine == "groups":
            assert out.cause is not None  # filled by ScoredBatch.__post_init__
            take = evidence_ok & ~grouped & (out.cause[rows] != None) & (out.cause[rows] != "insufficient_evidence")  # noqa: E711 - object array
        else:
            take = evidence_ok
        # Too few measurements is the reason whatever the groups said (no model for the part, no
        # group near): this scorer would judge the record otherwise, and the cause is a metric label.
        # (A group that judged the record said so itself, unless groups only name the setting.)
        naming_only = self.combine == "conditional" and not self.group_excursions
        weak = ~evidence_ok & (~grouped | naming_only)
        if naming_only:
            out.resolution[rows[weak]] = UNSCORABLE
            out.measured_share[rows[weak]] = share[weak]
        if weak.any():
            out.unscorable(rows[weak], "insufficient_evidence", f": more than {self.max_imputed_share:.0%} "
                                                                f"of the {len(unit.features)} production fields are missing")
        local = np.flatnonzero(take)
        if len(local) == 0:
            return
        keys = part_keys(facility[local], np.array([str(v) for v in item[local]], dtype=object))
        order = np.argsort(sub["timestamp"][local], kind="stable")
        state_key = (self.manifest.model_version, unit.maker)
        result = unit.score(settings[local], keys, production[local], order, baselines(memory, state_key))
        if memory is not None and result.baseline_state:
            remember_baselines(memory, state_key, result.baseline_state)
        target = rows[local]
        # The setting groups' own excursion bands still hold for the records they judge (unless
        # the store says they do not: group_excursions).
        held = grouped[local] & (self.group_excursions or self.combine != "conditional")
        group_excursion = np.where(held, np.nan_to_num(out.excursion[target], nan=0.0), 0.0)
        excursion = np.maximum(result.excursion, group_excursion)
        # what the excursions add to the score: a lasting one counts just above the line (its
        # ratio stays in the verdict's excursion); fmax: a NaN on one side never hides the other
        own = result.excursion if result.excursion_score is None else result.excursion_score
        score = np.fmax(result.score, np.maximum(own, group_excursion))
        if self.combine == "max":
            previous = np.where(grouped[local], np.nan_to_num(out.score[target], nan=0.0), 0.0)
            wins = score >= previous
        else:
            wins = np.ones(len(local), dtype=bool)
        target, score, excursion = target[wins], score[wins], excursion[wins]
        newly = out.resolution[target] == UNSCORABLE
        out.resolution[target[newly]] = CONDITIONAL
        out.judged(target)
        out.model_kind[target] = CONDITIONAL
        assert out.basis is not None  # filled by ScoredBatch.__post_init__
        out.basis[target] = np.where(result.unit[wins] == FALLBACK, "maker", "part")
        out.loss[target] = result.evidence[wins]
        out.threshold[target] = result.line[wins]
        out.score[target] = score
        out.anomaly[target] = score > 1.0
        out.margin[target] = np.where(excursion > result.score[wins], (excursion - 1.0) * result.line[wins],
                                      result.evidence[wins] - result.line[wins])
        out.excursion[target] = excursion  # already the larger of the two where the groups' bands hold
        out.measured_share[target] = share[local][wins]
        if self.conditional_probability_model is not None:
            out.defect_probability[target] = self.conditional_probability_model.predict(score, excursion)
        if explain:
            fields = result.fields[wins]
            rank = np.argsort(-fields, axis=1, kind="stable")[:, :TOP_FEATURES]
            names = unit.features
            top = np.round(np.take_along_axis(fields, rank, axis=1), 6).tolist()
            for t, indices, values in zip(target.tolist(), rank.tolist(), top):
                out.top_features[t] = [{"field": names[j], "error": v} for j, v in zip(indices, values)]
            judged = local[np.flatnonzero(wins)]
            # what no group listed: every record here when groups only name the setting
            listing = np.ones(len(target), dtype=bool) if naming_only else newly
            for i, columns in _row_lists(~measured[judged] & listing[:, None]):
                out.imputed[target[i]] = out.imputed[target[i]] + [names[j] for j in columns]
            if naming_only or newly.any():
                assert result.outside is not None  # every conditional score carries it
                for i, columns in _row_lists(result.outside[wins] & (listing[:, None])):
                    out.out_of_range[target[i]] = [names[j] for j in columns]
            if result.settings_outside is not None and result.settings_outside.any():
                for i, columns in _row_lists(result.settings_outside[wins]):  # set points far beyond the maker's
                    out.out_of_range[target[i]] = [unit.settings[j] for j in columns] + out.out_of_range[target[i]]

    def _own_band_excursions(
        self, evaluation: Any, raw: np.ndarray, aligned: np.ndarray, facility: np.ndarray, item: np.ndarray,
        cluster: np.ndarray, share: float,
    ) -> None:
        """A record judged by another part's model is an excursion against what *its own* setting
        produced in history (its profile band), not against the other part's band."""
        for i in np.flatnonzero(aligned):
            low, high = self.profile_band[(facility[i], item[i], int(cluster[i]))]
            measured = ~evaluation.imputed[i]
            tolerance = excursion_tolerance(low, high, share)
            evaluation.excursion[i] = excursion_ratios(raw[i][None, :], low, high, tolerance, measured[None, :])[0]

    def _judge(
        self, group: RuntimeGroup, local: np.ndarray, rows: np.ndarray, sub: Columns, resolution: Any,
        profiled: np.ndarray, facility: np.ndarray, item: np.ndarray, cluster: np.ndarray, out: ScoredBatch,
        explain: bool = True, with_model: bool = True,
    ) -> None:
        """Loss, line, excursions and verdict fields of the records (``local``) one group judges
        (``with_model=False``: excursions only, the conditional scorer decides)."""
        path = resolution.path[local]
        aligned = np.isin(path, ALIGNED_PATHS) & profiled[local]
        shift = self._alignment(group, path, profiled[local], facility[local], item[local], cluster[local])
        raw = sub.matrix(group.features, local)
        new_setting = (path != EXACT) & ~profiled[local]  # a setting this part never ran in history
        evaluation = group.evaluate(raw, shift, new_setting, with_model)
        self._own_band_excursions(evaluation, raw, aligned, facility[local], item[local], cluster[local], group.share)
        target = rows[local]
        features = group.features
        measured_share = 1.0 - evaluation.imputed.mean(axis=1) if len(features) else np.zeros(len(local))
        # Production values are the evidence: a record mostly filled with means is not "normal".
        evidence = measured_share >= 1.0 - self.max_imputed_share - 1e-12
        # The distance weight widens the line for a record judged by a sibling setting's model
        # without alignment; aligned and own-part records get none.
        distance = np.where((path == NEAREST) & ~aligned, resolution.distance[local], 0.0)
        prior = effective_thresholds(group.threshold, distance)
        threshold = prior * self.line_factors(group.id, path)
        excursion = evaluation.excursion.max(axis=1) if len(features) else np.zeros(len(local))
        margin, score, anomaly = decide(evaluation.loss, threshold, excursion)
        probability = self.probability.predict(path, score) if self.probability else np.full(len(local), np.nan)
        out.group_id[target] = group.id
        out.model_kind[target] = group.kind
        out.measured_share[target] = measured_share
        if explain:
            for i, columns in _row_lists(evaluation.imputed):
                out.imputed[target[i]] = out.imputed[target[i]] + [features[j] for j in columns]
        weak = target[~evidence]
        if len(weak):
            out.resolution[weak] = UNSCORABLE
            out.unscorable(
                weak, "insufficient_evidence", f": more than {self.max_imputed_share:.0%} of the "
                f"{len(features)} production fields are missing")
        keep = np.flatnonzero(evidence)
        target = target[keep]
        assert out.basis is not None  # filled by ScoredBatch.__post_init__
        out.basis[target] = "group"
        out.loss[target] = evaluation.loss[keep]
        out.threshold[target] = threshold[keep]
        out.margin[target] = margin[keep]
        out.score[target] = score[keep]
        out.anomaly[target] = anomaly[keep]
        out.excursion[target] = excursion[keep]
        out.defect_probability[target] = probability[keep]
        out.prior_ratio[target] = (evaluation.loss / prior)[keep]
        if explain:
            self._explain_fields(evaluation, keep, target, features, out)

    @staticmethod
    def _explain_fields(evaluation: Any, keep: np.ndarray, target: np.ndarray, features: tuple[str, ...], out: ScoredBatch) -> None:
        """out_of_range and top_features of the judged records (gross excursions first)."""
        for i, columns in _row_lists(evaluation.out_of_range[keep]):
            out.out_of_range[target[i]] = [features[j] for j in columns]
        # Gross excursions name their fields first (worst first); then the largest model errors.
        errors = evaluation.errors[keep]
        ratios = evaluation.excursion[keep]
        rank = np.where(ratios > 1.0, 1e6 + ratios, errors)
        top = np.argsort(-rank, axis=1, kind="stable")[:, :TOP_FEATURES]
        top_errors = np.round(np.take_along_axis(errors, top, axis=1).astype(float), 6).tolist()
        top_ratios = np.take_along_axis(ratios, top, axis=1).tolist()
        for i, (indices, errs, rs) in enumerate(zip(top.tolist(), top_errors, top_ratios)):
            out.top_features[target[i]] = [
                {"field": features[j], "error": e, **({"excursion": round(float(r), 3)} if r > 1.0 else {})}
                for j, e, r in zip(indices, errs, rs)
            ]


def _row_lists(mask: np.ndarray) -> list[tuple[int, list[int]]]:
    """(row, its True columns) of every row of a (rows, columns) mask with any True, in order."""
    rows, columns = np.nonzero(mask)
    if len(rows) == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows)) + 1
    return list(zip(rows[np.r_[0, cuts]].tolist(), (c.tolist() for c in np.split(columns, cuts))))


__all__ = ["ScoringEngine", "ScoredBatch", "UNSCORABLE_CAUSES", "unscorable_cause",
           "EXACT", "PART", "NEAREST", "ITEM", "MAKER", "UNSCORABLE"]
