import numpy as np
import pytest

from xreflect.core.config import ParamsError
from xreflect.data.split import (DEFAULT_MODE, PAD, Split, SplitModeError, candidates, eval_negatives_mode,
                                    make_split, negatives_per_set, require_mode, split_counts, stored_mode)
from xreflect.training.negatives import negative_pool


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


def test_valid_and_test_negatives_are_disjoint_never_positive_and_seeded():
    pairs = random_pairs()
    split = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=3)
    positives = {(u, i) for u, i in pairs}
    pool = negative_pool(split)
    for u in range(30):
        valid, test = set(split.valid_negatives[u].tolist()), set(split.test_negatives[u].tolist())
        assert len(valid) == len(test) == 50                      # distinct, no padding needed
        assert not valid & test                                   # disjoint from each other
        assert not any((u, i) in positives for i in valid | test)  # never a positive of any part
        assert not (valid | test) & set(pool.items_of(u).tolist())  # never a training negative
    again = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=3)
    assert np.array_equal(again.valid_negatives, split.valid_negatives)
    assert np.array_equal(again.test_negatives, split.test_negatives)
    other = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=50, seed=4)
    assert not np.array_equal(other.test_negatives, split.test_negatives)


def test_short_user_gets_smaller_disjoint_sets_and_keeps_a_training_negative():
    # 10 items, user 0 interacted with 0..3: 6 unobserved items (4..9). Two sets of 5 cannot be
    # disjoint, so each gets (6 - 1) // 2 = 2 and 2 items stay for training negatives.
    # User 1 interacted with 0..2 only: 7 unobserved, (7 - 1) // 2 = 3 each, 1 left.
    pairs = np.array([(0, i) for i in range(4)] + [(1, i) for i in range(3)], dtype=np.int32)
    assert negatives_per_set(np.array([4, 3]), 10, 5).tolist() == [2, 3]
    split = make_split(pairs, 2, 10, (1, 1, 1), n_negatives=5, seed=0)
    for u, (n, unobserved) in enumerate([(2, set(range(4, 10))), (3, set(range(3, 10)))]):
        valid = split.valid_negatives[u]
        test = split.test_negatives[u]
        assert (valid != PAD).sum() == (test != PAD).sum() == n and (valid[n:] == PAD).all()
        valid, test = set(valid[:n].tolist()), set(test[:n].tolist())
        pool = set(negative_pool(split).items_of(u).tolist())
        assert valid | test | pool == unobserved and not valid & test and len(pool) == len(unobserved) - 2 * n
    # Padding is never a candidate.
    assert candidates(split, "test").mask[0].sum() == 1 + 2


def test_too_few_unobserved_items_names_the_fix():
    pairs = np.array([(0, i) for i in range(8)], dtype=np.int32)  # 2 unobserved: needs 3
    with pytest.raises(ValueError, match="user index 0 has only 2 item"):
        make_split(pairs, 1, 10, (6, 1, 1), n_negatives=5, seed=0)


def test_candidates_hold_positives_then_negatives():
    split = Split(train=np.array([[0, 0], [1, 1]], np.int32), valid=np.array([[0, 2]], np.int32),
                  test=np.array([[0, 3], [0, 4], [1, 5]], np.int32),
                  valid_negatives=np.array([[8, 9], [6, 7]], np.int32),
                  test_negatives=np.array([[6, 7], [8, PAD]], np.int32), n_users=2, n_items=10)
    test = candidates(split, "test")
    assert test.items.tolist() == [[3, 4, 6, 7], [5, 0, 8, 0]]
    assert test.labels.tolist() == [[True, True, False, False], [True, False, False, False]]
    assert test.mask.tolist() == [[True, True, True, True], [True, False, True, False]]
    valid = candidates(split, "valid")  # validation uses its own negatives
    assert valid.items.tolist() == [[2, 8, 9], [0, 6, 7]]
    assert valid.mask.tolist() == [[True, True, True], [False, True, True]]


def test_split_round_trips_through_file(tmp_path):
    split = make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1)
    split.save(tmp_path / "s.npz")
    loaded = Split.load(tmp_path / "s.npz")
    assert np.array_equal(loaded.train, split.train) and loaded.n_items == 200 and loaded.seed == 1
    assert np.array_equal(loaded.test_negatives, split.test_negatives)


def test_old_split_format_is_refused_with_the_fix(tmp_path):
    # Format 1: one eval_negatives set shared by validation and test, no format_version.
    path = tmp_path / "split_0.npz"
    np.savez(path, train=np.zeros((1, 2), np.int32), valid=np.zeros((1, 2), np.int32),
             test=np.zeros((1, 2), np.int32), eval_negatives=np.zeros((1, 3), np.int32), n_users=1, n_items=5)
    with pytest.raises(ValueError, match=r"split_0.npz: split format 1.*dvc repro -f split"):
        Split.load(path)


# ------------------------------------------------------------------ split.eval_negatives: shared | disjoint

def test_shared_mode_draws_one_set_used_by_validation_and_test():
    pairs = random_pairs(n_users=30, n_items=200, per_user=(5, 40))
    split = make_split(pairs, 30, 200, (8, 1, 1), n_negatives=80, seed=4, mode="shared")
    assert split.eval_negatives_mode == "shared"
    assert np.array_equal(split.valid_negatives, split.test_negatives)
    for u in range(30):
        seen = set(pairs[pairs[:, 0] == u, 1].tolist())
        row = split.valid_negatives[u]
        assert not (set(row.tolist()) & seen) and len(set(row.tolist())) == 80  # 80 <= 200 - 40 - 1
    # candidates of both parts hold the same negatives
    assert np.array_equal(candidates(split, "valid").items[:, -80:], candidates(split, "test").items[:, -80:])


def test_shared_mode_allows_sets_that_disjoint_mode_must_shrink():
    counts = np.array([10, 150, 190])
    assert negatives_per_set(counts, 200, 80, sets=1).tolist() == [80, 49, 9]  # unobserved - 1 at most
    assert negatives_per_set(counts, 200, 80, sets=2).tolist() == [80, 24, 4]
    with pytest.raises(ValueError, match="needs at least 2"):
        negatives_per_set(np.array([199]), 200, 80, sets=1)


@pytest.mark.parametrize("mode", ["shared", "disjoint"])
def test_split_file_records_its_mode_and_round_trips(tmp_path, mode):
    split = make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1, mode=mode)
    split.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as data:
        assert str(data["eval_negatives_mode"]) == mode
        assert ("eval_negatives" in data.files) == (mode == "shared")
    loaded = Split.load(tmp_path / "s.npz", mode)
    assert loaded.eval_negatives_mode == mode
    assert np.array_equal(loaded.valid_negatives, split.valid_negatives)
    assert np.array_equal(loaded.test_negatives, split.test_negatives)


@pytest.mark.parametrize("written, wanted", [("shared", "disjoint"), ("disjoint", "shared")])
def test_a_split_of_the_other_mode_is_refused_with_the_fix(tmp_path, written, wanted):
    path = tmp_path / "split_0.npz"
    make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1, mode=written).save(path)
    with pytest.raises(SplitModeError, match=rf"split_0.npz: split drawn with split.eval_negatives={written}, "
                                             rf"but params.yaml says {wanted}.*dvc repro -f split"):
        Split.load(path, wanted)
    with pytest.raises(SplitModeError, match="dvc repro -f split"):
        require_mode(path, wanted)
    require_mode(path, written)  # the same mode passes


def test_a_format_2_file_without_a_mode_is_disjoint(tmp_path):
    split = make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1)
    path = tmp_path / "split_0.npz"
    np.savez(path, train=split.train, valid=split.valid, test=split.test, valid_negatives=split.valid_negatives,
             test_negatives=split.test_negatives, n_users=30, n_items=200, seed=1, format_version=2)
    assert stored_mode(path) == "disjoint"
    assert Split.load(path, "disjoint").eval_negatives_mode == "disjoint"
    with pytest.raises(SplitModeError):
        Split.load(path, "shared")


def test_the_mode_param_is_checked():
    assert eval_negatives_mode({"split": {"eval_negatives": "disjoint"}}) == "disjoint"
    assert eval_negatives_mode({"split": {}}) == DEFAULT_MODE
    with pytest.raises(ParamsError, match=r"split.eval_negatives='both'; allowed values are disjoint, shared"):
        eval_negatives_mode({"split": {"eval_negatives": "both"}})


def test_a_shared_split_with_two_different_sets_is_refused():
    split = make_split(random_pairs(), 30, 200, (8, 1, 1), n_negatives=20, seed=1)  # disjoint sets
    with pytest.raises(ValueError, match="must be equal"):
        Split(split.train, split.valid, split.test, split.valid_negatives, split.test_negatives, 30, 200, 1, "shared")
