import numpy as np
import pytest

from xreflect.data.split import Split, candidates, make_split, split_counts


def random_pairs(n_users=30, n_items=200, per_user=(5, 40), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(*per_user), replace=False)
        rows += [(u, i) for i in items]
    return np.array(rows, dtype=np.int32)


def test_split_counts_by_hand():
    n_valid, n_test = split_counts(np.array([5, 10, 20, 25]), (8, 1, 1))
    # 5*0.1=0.5 -> rounds half up to 1; 10 -> 1; 20 -> 2; 25*0.1=2.5 -> 3
    assert n_valid.tolist() == [1, 1, 2, 3] and n_test.tolist() == [1, 1, 2, 3]
    n_valid, n_test = split_counts(np.array([5, 10]), (6, 2, 2))
    assert n_valid.tolist() == [1, 2] and n_test.tolist() == [1, 2]


def test_split_counts_refuse_users_without_training_interactions():
    with pytest.raises(ValueError, match="min_interactions"):
        split_counts(np.array([2]), (8, 1, 1))


@pytest.mark.parametrize("ratio", [(8, 1, 1), (6, 2, 2)])
def test_split_partitions_each_user_with_ratio_and_minimum(ratio):
    pairs = random_pairs()
    split = make_split(pairs, 30, 200, ratio, n_negatives=50, seed=3)
    parts = [split.train, split.valid, split.test]
    together = np.concatenate(parts)
    assert sorted(map(tuple, together)) == sorted(map(tuple, pairs))  # a partition
    for u in range(30):
        n = (pairs[:, 0] == u).sum()
        got = [(p[:, 0] == u).sum() for p in parts]
        expected_valid, expected_test = (max(1, int(np.floor(n * r / sum(ratio) + 0.5))) for r in ratio[1:])
        assert got[1] == expected_valid >= 1 and got[2] == expected_test >= 1 and got[0] == n - got[1] - got[2]


def test_eval_negatives_are_distinct_never_positive_and_seeded():
    pairs = random_pairs()
    split = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=3)
    positives = {(u, i) for u, i in pairs}
    for u in range(30):
        negs = split.eval_negatives[u]
        assert len(set(negs.tolist())) == 50
        assert not any((u, int(i)) in positives for i in negs)
    again = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=3)
    assert np.array_equal(again.eval_negatives, split.eval_negatives)
    other = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=4)
    assert not np.array_equal(other.eval_negatives, split.eval_negatives)


def test_too_few_candidate_negatives_names_the_fix():
    pairs = np.array([(0, i) for i in range(8)], dtype=np.int32)
    with pytest.raises(ValueError, match="eval_negatives"):
        make_split(pairs, 1, 10, (8, 1, 1), n_negatives=5, seed=0)


def test_candidates_hold_positives_then_negatives():
    split = Split(train=np.array([[0, 0], [1, 1]], np.int32), valid=np.array([[0, 2]], np.int32),
                  test=np.array([[0, 3], [0, 4], [1, 5]], np.int32),
                  eval_negatives=np.array([[6, 7], [8, 9]], np.int32), n_users=2, n_items=10)
    test = candidates(split, "test")
    assert test.items.tolist() == [[3, 4, 6, 7], [5, 0, 8, 9]]
    assert test.labels.tolist() == [[True, True, False, False], [True, False, False, False]]
    assert test.mask.tolist() == [[True, True, True, True], [True, False, True, True]]


def test_split_round_trips_through_file(tmp_path):
    split = make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1)
    split.save(tmp_path / "s.npz")
    loaded = Split.load(tmp_path / "s.npz")
    assert np.array_equal(loaded.train, split.train) and loaded.n_items == 200
