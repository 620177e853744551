"""The setting-conditioned scorer inside the scoring engine, on the store of forests: it judges
every record with measurements (whatever its part or setting), what stays unscorable and why, and
how it meets the setting groups (combine modes)."""
from __future__ import annotations

import dataclasses
import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

from model_store.canonical import canonical_records
from model_store.serving.conditional import CONDITIONAL
from model_store.serving.scoring import UNSCORABLE, UNSCORABLE_CAUSES, ScoringEngine, unscorable_cause
from model_store.serving.store import open_store
from model_store.serving.verdict import VERDICT_SCHEMA_PATH, to_verdicts


@pytest.fixture(scope="module")
def manifest(forest_store):
    return open_store(forest_store)


@pytest.fixture(scope="module")
def engine(manifest) -> ScoringEngine:
    return ScoringEngine(manifest)


@pytest.fixture(scope="module")
def groups_only(manifest) -> ScoringEngine:
    return ScoringEngine(manifest, conditional=False)


@pytest.fixture(scope="module")
def records(forest_plant) -> pd.DataFrame:
    frame = canonical_records(forest_plant.records, forest_plant.schema)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def scored(engine, records):
    return engine.score(records, memory={}, backward=True)


def _measured_share(engine: ScoringEngine, records: pd.DataFrame) -> np.ndarray:
    share = np.zeros(len(records))
    for maker, unit in engine.conditional_units.items():
        rows = (records["maker"] == maker).to_numpy()
        share[rows] = records.loc[rows, list(unit.features)].notna().mean(axis=1).to_numpy()
    return share


def _unseen_part(records: pd.DataFrame) -> pd.DataFrame:
    """One record per maker, moved to a known machine of its maker running a known item of its
    maker that this machine never ran (no setting group, no history profile, no part)."""
    out = []
    for maker in sorted(records["maker"].dropna().unique()):
        sub = records[records["maker"] == maker]
        parts = set(zip(sub["facility"], sub["item"]))
        pairs = [(f, i) for f in sorted(sub["facility"].unique()) for i in sorted(sub["item"].dropna().unique())
                 if (f, i) not in parts]
        if not pairs:
            continue
        facility, item = pairs[0]
        row = sub[sub["facility"] != facility].head(1).copy()
        row["facility"], row["item"], row["record_id"] = facility, item, f"unseen-{maker}"
        out.append(row)
    assert out, "the forest plant should have a maker with two machines and two items"
    return pd.concat(out, ignore_index=True)


def test_every_maker_has_a_unit_and_the_store_lists_it(manifest, engine) -> None:
    section = manifest.raw["conditional"]
    assert section["combine"] == "conditional" and engine.combine == "conditional"
    assert set(section["units"]) == set(manifest.schema.makers) == set(engine.conditional_units)
    for entry in section["units"].values():
        assert entry["artifact"].startswith("conditional/") and entry["artifact"] in manifest.raw["artifacts"]
    assert section["held_out_rows"] > 0 and len(section["probability"]) == 2


def test_every_record_with_measurements_is_judged(engine, records, scored, manifest) -> None:
    share = _measured_share(engine, records)
    judgeable = records["maker"].isin(list(engine.conditional_units)).to_numpy() & (share >= 1.0 - engine.max_imputed_share)
    assert judgeable.mean() > 0.9
    assert not (scored.resolution[judgeable] == UNSCORABLE).any()
    assert set(scored.model_kind[judgeable]) == {CONDITIONAL}
    assert np.isfinite(scored.score[judgeable]).all() and np.isfinite(scored.loss[judgeable]).all()
    assert np.isfinite(scored.threshold[judgeable]).all() and np.isfinite(scored.defect_probability[judgeable]).all()
    # including the parts of the history that have no setting group of their own
    grouped = {(g.key.facility, g.key.item) for g in manifest.groups}
    own_group = np.array([(f, i) in grouped for f, i in zip(records["facility"], records["item"])])
    assert (~own_group & judgeable).sum() > 0
    assert not (scored.resolution[~own_group & judgeable] == UNSCORABLE).any()


def test_a_part_no_setting_group_can_judge_is_judged_by_the_conditional_scorer(engine, groups_only, records) -> None:
    unseen = _unseen_part(records)
    before = groups_only.score(unseen)
    # the setting groups alone cannot: this used to be the verdict
    assert (before.resolution == UNSCORABLE).all()
    assert {unscorable_cause(r) for r in before.reason} <= {"no_model_for_part", "no_group_near"}
    batch = engine.score(unseen)
    assert (batch.resolution == CONDITIONAL).all() and (batch.model_kind == CONDITIONAL).all()
    assert all(r is None for r in batch.reason) and all(g is None for g in batch.group_id)
    assert np.isfinite(batch.score).all() and np.isfinite(batch.loss).all() and np.isfinite(batch.threshold).all()
    assert np.array_equal(batch.anomaly, batch.score > 1.0) and np.array_equal(batch.anomaly, batch.margin > 0)
    assert np.isfinite(batch.defect_probability).all() and (batch.measured_share > 0.5).all()
    assert all(batch.top_features)
    verdicts = to_verdicts(unseen, batch, engine.model_version)
    validator = jsonschema.Draft202012Validator(json.loads(VERDICT_SCHEMA_PATH.read_text()))
    for verdict in verdicts:
        validator.validate(verdict)
        assert verdict["resolution"] == "conditional" and verdict["model_kind"] == "conditional"


def test_a_new_machine_of_a_known_maker_is_judged_too(engine, records) -> None:
    row = records[records["maker"].isin(list(engine.conditional_units))].head(1).copy()
    row["facility"] = "NEW-MACHINE"
    batch = engine.score(row)
    assert batch.resolution[0] == CONDITIONAL and np.isfinite(batch.score[0])


def test_a_far_out_value_on_a_part_without_a_group_alarms(engine, records) -> None:
    unseen = _unseen_part(records)
    for r in range(len(unseen)):
        row = unseen.iloc[[r]].copy()
        unit = engine.conditional_units[row["maker"].iloc[0]]
        field = unit.features[0]
        history = records.loc[records["maker"] == row["maker"].iloc[0], field]
        row[field] = history.max() + 10 * (history.max() - history.min())
        batch = engine.score(row)
        assert batch.resolution[0] == CONDITIONAL and batch.anomaly[0], field


def test_an_unknown_maker_stays_unscorable(engine, records) -> None:
    row = records.head(1).copy()
    row["maker"], row["facility"] = "NO-SUCH-MAKER", "F99"
    batch = engine.score(row)
    assert batch.resolution[0] == UNSCORABLE and batch.reason[0] == UNSCORABLE_CAUSES["unknown_maker"]
    assert batch.model_kind[0] is None and np.isnan(batch.score[0]) and not batch.anomaly[0]


@pytest.mark.parametrize("where", ["grouped", "unseen"])
def test_more_than_half_the_production_fields_missing_is_unscorable(engine, records, scored, where) -> None:
    if where == "grouped":
        row = records.iloc[[int(np.flatnonzero(scored.group_id != None)[0])]].copy()  # noqa: E711 - elementwise on an object array
    else:
        row = _unseen_part(records).head(1)
    unit = engine.conditional_units[row["maker"].iloc[0]]
    fields = list(unit.features)
    row[fields] = row[fields].astype(float).fillna(row[fields].astype(float).mean(axis=1).iloc[0])  # all measured
    half = len(fields) // 2
    at_limit = row.copy()
    at_limit[fields[:half]] = np.nan
    judged = engine.score(at_limit)
    assert judged.resolution[0] != UNSCORABLE and judged.measured_share[0] == pytest.approx(1 - half / len(fields))
    over = row.copy()
    over[fields[: half + 1]] = np.nan
    batch = engine.score(over)
    assert batch.resolution[0] == UNSCORABLE and unscorable_cause(batch.reason[0]) == "insufficient_evidence"
    assert not batch.anomaly[0] and np.isnan(batch.score[0])


def _with_combine(manifest, combine: str) -> ScoringEngine:
    raw = {**manifest.raw, "conditional": {**manifest.raw["conditional"], "combine": combine}}
    return ScoringEngine(dataclasses.replace(manifest, raw=raw))


def test_combine_groups_leaves_grouped_records_to_their_groups(manifest, groups_only, records) -> None:
    sample = pd.concat([records.head(1500), _unseen_part(records)], ignore_index=True)
    batch = _with_combine(manifest, "groups").score(sample)
    alone = groups_only.score(sample)
    grouped = alone.resolution != UNSCORABLE
    assert grouped.any() and (~grouped).any()
    for name in ("score", "loss", "threshold", "anomaly", "model_kind", "resolution", "group_id"):
        assert np.array_equal(getattr(batch, name)[grouped], getattr(alone, name)[grouped]), name
    assert (batch.resolution[~grouped] == CONDITIONAL).all()


def test_combine_max_alarms_whenever_either_does(manifest, groups_only, engine, records) -> None:
    sample = records.head(3000)
    batch = _with_combine(manifest, "max").score(sample)
    alone, conditional = groups_only.score(sample), engine.score(sample)
    grouped = alone.resolution != UNSCORABLE
    assert np.all(batch.score[grouped] >= alone.score[grouped])
    assert np.all(batch.anomaly[grouped] >= alone.anomaly[grouped])
    assert np.all(batch.anomaly >= conditional.anomaly)
    assert np.array_equal(batch.anomaly, batch.score > 1.0)


def _with_group_excursions(manifest, on: bool) -> ScoringEngine:
    raw = {**manifest.raw, "conditional": {**manifest.raw["conditional"], "group_excursions": on}}
    return ScoringEngine(dataclasses.replace(manifest, raw=raw))


def test_the_groups_excursion_bands_alarm_beside_the_conditional_scorer_only_when_the_store_says_so(manifest, groups_only, records) -> None:
    sample = records.head(3000).copy()
    # every shot's first production field far beyond anything: the setting groups' bands see it
    unit = next(iter(ScoringEngine(manifest).conditional_units.values()))
    sample.loc[sample["maker"] == unit.maker, unit.features[0]] = 1e9
    alone = groups_only.score(sample)
    with_groups, without = _with_group_excursions(manifest, True).score(sample), _with_group_excursions(manifest, False).score(sample)
    grouped = alone.resolution != UNSCORABLE
    assert (np.nan_to_num(alone.excursion[grouped]) > 1).any()
    # with the groups' bands: never below what the groups alone reported; without: the conditional scorer's own
    assert np.all(with_groups.excursion[grouped] >= np.nan_to_num(alone.excursion[grouped]))
    assert np.all(without.excursion <= with_groups.excursion)
    assert np.array_equal(without.anomaly, without.score > 1.0) and np.array_equal(with_groups.anomaly, with_groups.score > 1.0)
    judged = without.resolution != UNSCORABLE
    assert np.array_equal(with_groups.loss[judged], without.loss[judged])  # the evidence itself is the same

    # With the conditional scorer's own excursions silenced, what remains is the groups' bands:
    # a value twice its setting group's tolerance beyond the group's band reads 2 with them, 0 without.
    plain = records.head(400).copy()
    first = groups_only.score(plain)
    on, off = _with_group_excursions(manifest, True), _with_group_excursions(manifest, False)
    for engine_ in (on, off):
        for maker, unit in list(engine_.conditional_units.items()):
            quiet = dataclasses.replace(unit)
            width = len(unit.features)
            object.__setattr__(quiet, "_excursion_ratios", lambda keys, *args, width=width, **kwargs: (
                np.zeros((len(keys), width)), np.zeros((len(keys), width), dtype=bool),
                np.zeros((len(keys), width), dtype=bool)))
            engine_.conditional_units[maker] = quiet
    with_unit = plain["maker"].isin(list(on.conditional_units)).to_numpy()
    rows = np.flatnonzero((first.resolution != UNSCORABLE) & with_unit)[:40]
    assert len(rows)
    for r in rows:
        group = groups_only.group(first.group_id[r])
        plain.loc[r, group.features[0]] = group.band_high[0] + 2.0 * group.tolerance[0]
    pushed_on, pushed_off = on.score(plain), off.score(plain)
    assert np.all(pushed_on.excursion[rows] >= 2.0 - 1e-9) and pushed_on.anomaly[rows].all()
    assert np.all(pushed_off.excursion[rows] == 0.0)


def test_the_streams_memory_carries_each_parts_baseline_so_batches_score_as_one(engine, records) -> None:
    from model_store.serving.scoring import BASELINE_MEMORY

    later = records.iloc[-600:].reset_index(drop=True)
    whole = engine.score(later, memory={}, backward=False, explain=False)
    memory: dict = {}
    parts = [engine.score(later.iloc[i : i + 150].reset_index(drop=True), memory=memory, backward=False, explain=False)
             for i in range(0, len(later), 150)]
    assert np.allclose(np.concatenate([p.score for p in parts]), whole.score, equal_nan=True)
    carried = memory[BASELINE_MEMORY]
    assert set(carried) == {(engine.manifest.model_version, maker) for maker in later["maker"].unique()}
    # a shallow copy (what POST /score scores with) never moves the stream's baselines
    before = {k: dict(v) for k, v in carried.items()}
    copy = {facility: dict(state) if isinstance(state, dict) else state for facility, state in memory.items()}
    engine.score(later.iloc[:50].assign(**{c: later[c].iloc[:50] * 1.5 for c in engine.conditional_units[later["maker"].iloc[0]].features}),
                 memory=copy, backward=False, explain=False)
    assert memory[BASELINE_MEMORY].keys() == before.keys()
    for key, parts_ in before.items():
        assert memory[BASELINE_MEMORY][key].keys() == parts_.keys()
        assert all(np.array_equal(memory[BASELINE_MEMORY][key][p], v) for p, v in parts_.items())


def test_remembered_baselines_are_bounded_and_belong_to_one_store_version() -> None:
    from model_store.serving import scoring

    memory: dict = {}
    scoring.remember_baselines(memory, ("v1", "M"), {"a": np.zeros(2)})
    scoring.remember_baselines(memory, ("v1", "N"), {"b": np.ones(2)})
    assert set(memory[scoring.BASELINE_MEMORY]) == {("v1", "M"), ("v1", "N")}
    scoring.remember_baselines(memory, ("v2", "M"), {"a": np.ones(2)})  # a new store: the old one's are dropped
    assert set(memory[scoring.BASELINE_MEMORY]) == {("v2", "M")}
    assert scoring.baselines(memory, ("v1", "N")) is None and scoring.baselines(None, ("v2", "M")) is None
    cap = scoring.MAX_REMEMBERED_PARTS
    scoring.remember_baselines(memory, ("v2", "M"), {f"p{i}": np.zeros(2) for i in range(cap + 5)})
    kept = scoring.baselines(memory, ("v2", "M"))
    assert len(kept) == cap and "a" not in kept and f"p{cap + 4}" in kept and "p4" not in kept and "p5" in kept
    scoring.remember_baselines(memory, ("v2", "M"), {"p5": np.ones(2)})  # seen again: now the newest
    assert list(scoring.baselines(memory, ("v2", "M")))[-1] == "p5"


# -- one bad model file is that group's problem ------------------------------------------------
def _corrupt_one_group(forest_store, tmp_path, records):
    """A copy of the store, verified, then the model file of the group judging most of the sample
    overwritten (a disk error, a partial copy of one file)."""
    import shutil
    from collections import Counter

    root = tmp_path / "store"
    shutil.copytree(forest_store, root)
    manifest = open_store(root)
    judged = ScoringEngine(open_store(forest_store), conditional=False).score(records.head(3000)).group_id
    busiest = Counter(g for g in judged if g is not None).most_common(1)[0][0]
    entry = manifest.group(busiest)
    (root / entry.artifacts["forward"]).write_bytes(b"not the model file")
    return manifest, busiest


@pytest.mark.parametrize("conditional", [False, True])
def test_a_group_whose_model_file_is_bad_leaves_every_other_group_judging(forest_store, tmp_path, records, conditional):
    manifest, broken = _corrupt_one_group(forest_store, tmp_path, records)
    sample = records.head(3000)
    if conditional:
        engine, intact = _with_combine(manifest, "groups"), _with_combine(open_store(forest_store), "groups")
    else:
        engine, intact = ScoringEngine(manifest, conditional=False), ScoringEngine(open_store(forest_store), conditional=False)
    batch, expected = engine.score(sample), intact.score(sample)
    hit = batch.group_id == broken
    assert hit.any() and (~hit).any()
    assert list(engine.broken_groups) == [broken] and "does not match its sha256" in engine.broken_groups[broken]
    for name in ("resolution", "score", "anomaly", "group_id"):
        assert np.array_equal(getattr(batch, name)[~hit], getattr(expected, name)[~hit], equal_nan=name == "score"), name
    if conditional:  # the maker's setting-conditioned scorer judges them instead
        assert (batch.resolution[hit] == CONDITIONAL).all()
    else:
        assert (batch.resolution[hit] == UNSCORABLE).all() and not batch.anomaly[hit].any()
        assert all(unscorable_cause(r) == "broken_model" and broken in r for r in batch.reason[hit])


def test_a_file_that_fails_because_the_store_was_replaced_raises_for_a_reload(forest_store, tmp_path, records):
    from model_store.errors import StoreError

    manifest, _ = _corrupt_one_group(forest_store, tmp_path, records)
    raw = json.loads((manifest.root / "manifest.json").read_text())
    (manifest.root / "manifest.json").write_text(json.dumps({**raw, "model_version": "a-newer-one"}))
    with pytest.raises(StoreError):
        ScoringEngine(manifest, conditional=False).score(records.head(3000))
