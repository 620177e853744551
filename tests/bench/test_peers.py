"""The proving-ground bench's own rules: which pushes of the excursion suite count as beyond the tolerance."""
from __future__ import annotations

import numpy as np
import pytest

from model_store.canonical import canonical_records
from model_store.serving.conditional import part_keys
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store

peers = pytest.importorskip("bench.peers")


def test_a_push_counts_beyond_the_tolerance_only_past_its_parts_raw_band_plus_tolerance(forest_plant, forest_store):
    engine = ScoringEngine(open_store(forest_store))
    records = canonical_records(forest_plant.records, forest_plant.schema)
    maker, unit = next((m, u) for m, u in engine.conditional_units.items() if len(u.raw_set.index))
    rows = records[records["maker"] == maker]
    keys = part_keys(rows["facility"].to_numpy(dtype=object), np.array([str(i) for i in rows["item"]], dtype=object))
    known = np.flatnonzero([str(k) in unit.raw_set.index for k in keys])
    shot = rows.iloc[[known[0]]].reset_index(drop=True)
    table = unit.raw_set.index[str(keys[known[0]])]
    field = unit.features[0]
    high, tolerance = unit.raw_set.band_high[table, 0], unit.raw_set.tolerance[table, 0]
    test = shot.loc[[0, 0, 0, 0]].reset_index(drop=True)
    pushed = test.copy()
    # 2 tolerances out; half a tolerance out; exactly one (the line: not beyond); untouched
    pushed.loc[:, field] = [high + 2 * tolerance, high + 0.5 * tolerance, high + tolerance, test.at[0, field]]
    production = {m: list(f.production) for m, f in forest_plant.schema.makers.items()}
    beyond = peers._beyond_tolerance(engine, test, {"kind": (pushed, np.arange(4))}, production)
    assert beyond["kind"].tolist() == [True, False, False, False]


def test_the_recall_counts_only_the_pushes_beyond_the_tolerance():
    flagged = {"a": np.array([True, False, True]), "b": np.array([False, False])}
    beyond = {"a": np.array([True, True, False]), "b": np.array([False, False])}
    out = peers._tolerance_recall(flagged, beyond)
    assert out["excursion_pushes_beyond_tolerance"] == 2 and out["excursion_recall_beyond_tolerance"] == 0.5
    assert out["excursion_recall_by_tolerance"] == {"a": {"pushes": 2, "recall": 0.5}, "b": {"pushes": 0, "recall": None}}
