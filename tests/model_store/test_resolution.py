import numpy as np

from model_store.resolution import EXACT, NEAREST, UNSCORABLE, MakerIndex, resolve


def _index() -> MakerIndex:
    entries = [
        {"id": "a", "key": {"facility": "F1", "item": "I1", "cluster": 0}, "setting_centroid": [0.1, 0.1]},
        {"id": "b", "key": {"facility": "F1", "item": "I1", "cluster": 1}, "setting_centroid": [0.9, 0.9]},
        {"id": "c", "key": {"facility": "F2", "item": "I2", "cluster": 2}, "setting_centroid": [0.5, 0.5]},
    ]
    return MakerIndex.build(entries, 2)


def test_paths() -> None:
    facility = np.array(["F1", "F1", "F3", "F1"], dtype=object)
    item = np.array(["I1", "I1", "I9", "I1"], dtype=object)
    cluster = np.array([1, 2, 0, 0])
    scaled = np.array([[0.9, 0.9], [0.2, 0.2], [0.45, 0.5], [np.nan, 0.1]])
    r = resolve(_index(), facility, item, cluster, scaled)
    assert list(r.path) == [EXACT, NEAREST, NEAREST, UNSCORABLE]
    assert list(r.group) == [1, 0, 2, -1]  # same facility/item preferred; else the whole maker
    assert np.isclose(r.distance[1], np.hypot(0.1, 0.1))


def test_same_facility_item_beats_a_closer_group_elsewhere() -> None:
    r = resolve(_index(), np.array(["F1"], dtype=object), np.array(["I1"], dtype=object), np.array([7]), np.array([[0.5, 0.5]]))
    assert r.path[0] == NEAREST and r.group[0] in (0, 1)


def test_max_distance_makes_far_records_unscorable() -> None:
    r = resolve(_index(), np.array(["F9"], dtype=object), np.array(["I9"], dtype=object), np.array([0]), np.array([[3.0, 3.0]]), max_distance=1.0)
    assert r.path[0] == UNSCORABLE and r.group[0] == -1


def test_empty_index_is_unscorable() -> None:
    empty = MakerIndex.build([], 2)
    r = resolve(empty, np.array(["F1"], dtype=object), np.array(["I1"], dtype=object), np.array([0]), np.array([[0.1, 0.1]]))
    assert r.path[0] == UNSCORABLE


def test_other_parts_only_for_profiled_records() -> None:
    facility = np.array(["F3", "F3"], dtype=object)
    item = np.array(["I9", "I9"], dtype=object)
    scaled = np.array([[0.45, 0.5], [0.45, 0.5]])
    r = resolve(_index(), facility, item, np.array([0, 0]), scaled, profiled=np.array([True, False]))
    assert list(r.path) == [NEAREST, UNSCORABLE]
    # the same facility and item may always fall back to a sibling setting
    same = resolve(_index(), np.array(["F1"], dtype=object), np.array(["I1"], dtype=object), np.array([5]),
                   np.array([[0.5, 0.5]]), profiled=np.array([False]))
    assert same.path[0] == NEAREST
