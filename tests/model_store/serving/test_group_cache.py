"""Loaded groups: the LRU cache and a group's evaluation (model_store/serving/group_cache.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from model_store.errors import StoreError
from model_store.serving.excursions import NEW_SETTING_FLOOR, excursion_tolerance
from model_store.serving.group_cache import GroupCache, load_runtime_group
from model_store.serving.store import open_store


@pytest.fixture(scope="module")
def manifest(forest_store):
    return open_store(forest_store)


def test_the_cache_keeps_the_most_recently_used_groups(manifest) -> None:
    a, b, c = (entry.id for entry in manifest.groups[:3])
    cache = GroupCache(manifest, capacity=2)
    first = cache.get(a)
    cache.get(b)
    assert cache.get(a) is first  # a hit returns the loaded group
    cache.get(c)  # evicts b, the least recently used
    assert len(cache) == 2
    assert (cache.stats.hits, cache.stats.misses, cache.stats.loads, cache.stats.evictions) == (1, 3, 3, 1)
    cache.get(a)  # still there
    cache.get(b)  # loaded again
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (2, 4, 2)


def test_a_tampered_artifact_is_refused_when_the_group_loads(manifest, tmp_path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(manifest.root, copy)
    opened = open_store(copy)
    entry = opened.groups[0]
    path = copy / entry.artifacts["forward"]
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    with pytest.raises(StoreError, match="sha256"):
        load_runtime_group(opened, entry)


def _group(manifest):
    return load_runtime_group(manifest, manifest.groups[0])


def test_a_measured_value_at_the_tolerance_is_not_an_excursion_and_beyond_is(manifest) -> None:
    group = _group(manifest)
    row = group.median_raw[None, :].copy()
    j = 0
    row[0, j] = group.band_high[j] + group.tolerance[j]
    assert group.evaluate(row).excursion[0, j] == pytest.approx(1.0)
    row[0, j] = group.band_high[j] + 1.001 * group.tolerance[j]
    assert group.evaluate(row).excursion[0, j] > 1.0
    row[0, j] = group.band_low[j] - 2 * group.tolerance[j]  # below the band counts alike
    assert group.evaluate(row).excursion[0, j] == pytest.approx(2.0)


def test_a_setting_the_part_never_ran_gets_the_wider_tolerance(manifest) -> None:
    group = _group(manifest)
    wide = excursion_tolerance(group.band_low, group.band_high, group.share, NEW_SETTING_FLOOR)
    j = int(np.argmax(wide - group.tolerance))
    assert wide[j] > group.tolerance[j]
    row = group.median_raw[None, :].copy()
    row[0, j] = group.band_high[j] + (group.tolerance[j] + wide[j]) / 2  # between the two tolerances
    rows = np.repeat(row, 2, axis=0)
    evaluation = group.evaluate(rows, new_setting=np.array([False, True]))
    assert evaluation.excursion[0, j] > 1.0 >= evaluation.excursion[1, j]


def test_a_missing_value_is_imputed_never_shifted_and_never_an_excursion(manifest) -> None:
    group = _group(manifest)
    row = group.median_raw[None, :].copy()
    row[0, 0] = np.nan
    shift = np.full((1, len(group.features)), 1e9)  # an absurd alignment shift
    evaluation = group.evaluate(row, shift=shift)
    assert evaluation.imputed[0, 0] and not evaluation.imputed[0, 1:].any()
    assert evaluation.excursion[0, 0] == 0.0  # the imputed field is no evidence of an excursion
    assert evaluation.excursion[0, 1] > 1.0  # the measured ones were shifted (and far out)
    assert not evaluation.out_of_range[0, 0]
