"""The NumPy forest's rule for unmeasured values: the shortest path below a split on one."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from model_store.serving.forest import ForestArrays, _shortest_leaves


@pytest.fixture(scope="module")
def forest() -> ForestArrays:
    x = np.random.default_rng(0).random((400, 4)).astype(np.float32)
    return ForestArrays.from_sklearn(IsolationForest(n_estimators=25, random_state=0).fit(x))


def test_shortest_leaf_of_a_hand_built_tree() -> None:
    # node 0 splits into 1 (leaf, depth 3.0) and 2; node 2 splits into 3 (leaf 1.5) and 4 (leaf 2.0)
    left = np.array([1, 1, 3, 3, 4])
    right = np.array([2, 1, 4, 3, 4])
    depth = np.array([0.0, 3.0, 0.0, 1.5, 2.0])
    assert _shortest_leaves(left, right, depth).tolist() == [3, 1, 3, 3, 4]
    # a tie keeps the left leaf
    assert _shortest_leaves(np.array([1, 1, 2]), np.array([2, 1, 2]), np.array([0.0, 2.0, 2.0])).tolist() == [1, 1, 2]


def test_no_gaps_is_sklearn_parity(forest: ForestArrays) -> None:
    x = np.random.default_rng(1).random((50, 4)).astype(np.float32)
    assert np.array_equal(forest.loss(x), forest.loss(x, np.zeros_like(x, dtype=bool)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.integers(0, 3), st.floats(0, 1))
def test_an_unmeasured_value_never_scores_lower_than_any_real_value(forest: ForestArrays, row: list[float], field: int,
                                                                     other: float) -> None:
    x = np.array([row], dtype=np.float32)
    mask = np.zeros_like(x, dtype=bool)
    mask[0, field] = True
    gap = forest.loss(x, mask)[0]
    filled = x.copy()
    filled[0, field] = other
    assert gap >= forest.loss(filled)[0] - 1e-12
