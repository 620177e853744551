"""Resolution: the fallback chain exact -> part -> nearest -> item -> maker -> unscorable."""
import numpy as np
import pytest

from model_store.serving.resolution import EXACT, ITEM, MAKER, NEAREST, PART, PATHS, UNSCORABLE, MakerIndex, resolve
from model_store.serving.store_format import Band, GroupEntry, StoreGroupKey
from model_store.serving.thresholds import GroupThreshold


def _entry(group_id: str, facility: str, item: str, cluster: int, centroid: list[float]) -> GroupEntry:
    """A group entry of which resolution reads the id, key and setting centroid (the rest is filler)."""
    one = (0.0,)
    return GroupEntry(group_id, StoreGroupKey("M", facility, item, cluster), "iforest", {"forward": "f.npz"}, 300, 1, 0.0,
                      ("p",), one, one, one, one, one, one, Band(one, one), {}, GroupThreshold(1, 1, 1, 0, 0, 0, 0),
                      tuple(centroid), tuple(centroid), {})


def _index(with_part: bool = True) -> MakerIndex:
    entries = [
        _entry("a", "F1", "I1", 0, [0.1, 0.1]),
        _entry("b", "F1", "I1", 1, [0.9, 0.9]),
        _entry("c", "F2", "I2", 2, [0.5, 0.5]),
        _entry("d", "F3", "I1", 3, [0.6, 0.6]),
    ]
    if with_part:
        entries.append(_entry("p", "F1", "I1", -1, [0.5, 0.5]))
    return MakerIndex.build(entries, 2)


def _one(index: MakerIndex, facility: str, item, cluster: int, scaled, profiled: bool = True, **kw):
    return resolve(index, np.array([facility], dtype=object), np.array([item], dtype=object), np.array([cluster]),
                   np.array([scaled], dtype=float), profiled=np.array([profiled]), **kw)


def test_exact_wins_over_everything() -> None:
    r = _one(_index(), "F1", "I1", 1, [0.1, 0.1])  # nearer to a's centroid, but its own cluster is b
    assert r.path[0] == EXACT and r.group[0] == 1
    assert r.distance[0] == pytest.approx(np.hypot(0.8, 0.8))


def test_part_pool_comes_before_a_sibling_setting() -> None:
    r = _one(_index(), "F1", "I1", 7, [0.12, 0.1])
    assert r.path[0] == PART and r.group[0] == 4


def test_nearest_sibling_when_the_part_has_no_pool() -> None:
    r = _one(_index(with_part=False), "F1", "I1", 7, [0.8, 0.8], profiled=False)
    assert r.path[0] == NEAREST and r.group[0] == 1 and r.distance[0] == pytest.approx(np.hypot(0.1, 0.1))


def test_same_item_elsewhere_before_another_part() -> None:
    # F9/I1 has no model: d (same item on F3) wins over c (another part) although c is nearer
    r = _one(_index(with_part=False), "F9", "I1", 0, [0.5, 0.5])
    assert r.path[0] == ITEM and r.group[0] == 3
    # among the same item's groups elsewhere the nearest centroid wins (the F1/I1 pool sits at 0)
    assert _one(_index(), "F9", "I1", 0, [0.5, 0.5]).group[0] == 4


def test_another_part_only_for_profiled_records() -> None:
    assert _one(_index(), "F9", "I9", 0, [0.5, 0.5]).path[0] == MAKER
    unprofiled = _one(_index(), "F9", "I9", 0, [0.5, 0.5], profiled=False)
    assert unprofiled.path[0] == UNSCORABLE and unprofiled.group[0] == -1 and np.isnan(unprofiled.distance[0])
    assert _one(_index(), "F9", "I1", 0, [0.5, 0.5], profiled=False).path[0] == UNSCORABLE


def test_disabled_paths_move_records_down_the_chain() -> None:
    index = _index()
    assert _one(index, "F1", "I1", 7, [0.8, 0.8], enabled=(EXACT, NEAREST, ITEM, MAKER)).path[0] == NEAREST
    moved = _one(index, "F9", "I1", 0, [0.5, 0.5], enabled=(EXACT, PART, NEAREST, MAKER))
    assert moved.path[0] == MAKER and moved.group[0] == 2  # another part: the same item is not offered again
    assert _one(index, "F9", "I9", 0, [0.5, 0.5], enabled=(EXACT, PART)).path[0] == UNSCORABLE


def test_max_distance_bounds_the_setting_paths_but_not_exact_or_part() -> None:
    index = _index()
    assert _one(index, "F9", "I9", 0, [3.0, 3.0], max_distance=1.0).path[0] == UNSCORABLE
    assert _one(index, "F1", "I1", 0, [3.0, 3.0], max_distance=1.0).path[0] == EXACT
    assert _one(index, "F1", "I1", 7, [3.0, 3.0], max_distance=1.0).path[0] == PART
    # the boundary: a distance equal to the bound is allowed
    lone = MakerIndex.build([_entry("c", "F2", "I2", 2, [0.5, 0.5])], 2)
    r = _one(lone, "F9", "I9", 0, [0.5, 1.5], max_distance=1.0)
    assert r.path[0] == MAKER and r.distance[0] == 1.0
    assert _one(lone, "F9", "I9", 0, [0.5, 1.5000001], max_distance=1.0).path[0] == UNSCORABLE


def test_unknown_settings_only_the_part_pool() -> None:
    index = _index()
    r = _one(index, "F1", "I1", -1, [np.nan, 0.1])
    assert r.path[0] == PART and np.isnan(r.distance[0])
    assert _one(_index(with_part=False), "F1", "I1", -1, [np.nan, 0.1]).path[0] == UNSCORABLE
    assert _one(index, "F1", None, -1, [np.nan, 0.1]).path[0] == UNSCORABLE


def test_empty_index_is_unscorable() -> None:
    r = _one(MakerIndex.build([], 2), "F1", "I1", 0, [0.1, 0.1])
    assert r.path[0] == UNSCORABLE


def test_rows_keep_their_own_answers_in_a_mixed_batch() -> None:
    facility = np.array(["F1", "F1", "F9", "F9", "F1"], dtype=object)
    item = np.array(["I1", "I1", "I1", "I9", "I1"], dtype=object)
    cluster = np.array([0, 7, 0, 0, -1])
    scaled = np.array([[0.1, 0.1], [0.5, 0.5], [0.6, 0.6], [0.5, 0.5], [np.nan, np.nan]])
    r = resolve(_index(), facility, item, cluster, scaled, profiled=np.array([True, True, True, False, False]))
    assert list(r.path) == [EXACT, PART, ITEM, UNSCORABLE, PART]
    assert list(r.group) == [0, 4, 3, -1, 4]
    assert set(PATHS) == {EXACT, PART, NEAREST, ITEM, MAKER}


def test_empty_batch_and_empty_index_answers() -> None:
    empty = resolve(_index(), np.array([], dtype=object), np.array([], dtype=object), np.array([], dtype=int), np.zeros((0, 2)))
    assert len(empty.group) == len(empty.path) == len(empty.distance) == 0
    r = _one(MakerIndex.build([], 2), "F1", "I1", 0, [0.1, 0.1])
    assert r.group.tolist() == [-1] and np.isnan(r.distance[0])


def test_without_profiles_every_record_may_take_the_aligned_paths() -> None:
    r = resolve(_index(), np.array(["F9", "F9"], dtype=object), np.array(["I9", "I1"], dtype=object), np.array([0, 0]),
                np.array([[0.5, 0.5], [0.6, 0.6]]), profiled=None)
    assert list(r.path) == [MAKER, ITEM] and list(r.group) == [2, 3]
