"""Training negatives: never a positive (any part), never a validation or test negative, spread over the pool."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from xreflect.data.split import Split, make_split
from xreflect.training.negatives import forbidden_matrix, negative_pool, sample_negatives


def hand_split() -> Split:
    # 2 users, 8 items. User 0: train {0, 1}, valid {2}, test {3}, valid negatives {4}, test
    # negatives {5} -> pool {6, 7}. User 1: train {4, 5}, valid {6}, test {7}, valid negatives {0},
    # test negatives {1} -> pool {2, 3}.
    pairs = lambda *p: np.array(p, dtype=np.int32)  # noqa: E731
    return Split(train=pairs([0, 0], [0, 1], [1, 4], [1, 5]), valid=pairs([0, 2], [1, 6]),
                 test=pairs([0, 3], [1, 7]), valid_negatives=pairs([4], [0]), test_negatives=pairs([5], [1]),
                 n_users=2, n_items=8)


def test_pool_by_hand():
    pool = negative_pool(hand_split())
    assert pool.items_of(0).tolist() == [6, 7]
    assert pool.items_of(1).tolist() == [2, 3]


def test_samples_stay_in_pool_and_are_uniform():
    pool = negative_pool(hand_split())
    users = np.repeat([0, 1], 20_000)
    items = sample_negatives(pool, users, np.random.default_rng(0))
    assert set(items[users == 0].tolist()) == {6, 7}
    assert set(items[users == 1].tolist()) == {2, 3}
    # Uniform over a pool of 2: each item ~ 1/2 (20,000 draws: standard error 0.0035).
    assert abs(np.mean(items[users == 0] == 6) - 0.5) < 0.02
    assert abs(np.mean(items[users == 1] == 2) - 0.5) < 0.02


def test_user_without_allowed_items_fails_with_advice():
    split = hand_split()
    full = Split(split.train, split.valid, split.test, np.array([[4, 6], [0, 2]], np.int32),
                 np.array([[5, 7], [1, 3]], np.int32), 2, 8)
    with pytest.raises(ValueError, match="eval_negatives"):
        negative_pool(full)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(2, 20), n_items=st.integers(30, 60))
def test_random_splits_never_draw_forbidden_items(seed, n_users, n_items):
    rng = np.random.default_rng(seed)
    per_user = 6
    pairs = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False)])
    split = make_split(pairs, n_users, n_items, (8, 1, 1), n_negatives=10, seed=seed)
    pool = negative_pool(split)
    forbidden = forbidden_matrix(split)
    users = np.repeat(np.arange(n_users), 60 * n_items)
    items = sample_negatives(pool, users, rng)
    assert not forbidden[users, items].any()
    # The pool is exactly the complement of the forbidden set, and 60 draws per pool item hit each one.
    for u in range(n_users):
        assert set(pool.items_of(u).tolist()) == set(np.flatnonzero(~forbidden[u]).tolist())
        assert set(items[users == u].tolist()) == set(pool.items_of(u).tolist())


@pytest.mark.parametrize("mode, sets", [("shared", 1), ("disjoint", 2)])
def test_pool_leaves_out_positives_and_the_modes_evaluation_sets(mode, sets):
    """Every user here has 100 - 10 = 90 unobserved items and 20 negatives per set: the pool keeps
    90 - 20 items in shared mode (one set) and 90 - 40 in disjoint mode (two)."""
    rng = np.random.default_rng(5)
    n_users, n_items = 12, 100
    pairs = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 10, replace=False)])
    split = make_split(pairs, n_users, n_items, (8, 1, 1), n_negatives=20, seed=2, mode=mode)
    pool = negative_pool(split)
    assert pool.sizes().tolist() == [90 - 20 * sets] * n_users
    for u in range(n_users):
        expected = set(range(n_items)) - set(pairs[pairs[:, 0] == u, 1].tolist())
        expected -= set(split.valid_negatives[u].tolist()) | set(split.test_negatives[u].tolist())
        assert set(pool.items_of(u).tolist()) == expected
        if mode == "disjoint":
            assert not set(split.valid_negatives[u].tolist()) & set(split.test_negatives[u].tolist())
