import pandas as pd

from xreflect.data.kcore import k_core, to_implicit


def frame(pairs):
    return pd.DataFrame(pairs, columns=["user_id", "item_id"])


def test_k_core_iterates_until_stable():
    # k=2. Item c has one interaction (u3) -> removed; then u3 has one left (a) -> removed;
    # then item a has u1, u2 -> stays. u1 and u2 each keep a, b.
    pairs = frame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")])
    kept = k_core(pairs, 2)
    assert sorted(map(tuple, kept.to_numpy())) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]


def test_k_core_cascade_can_empty_everything():
    # A chain where each removal pushes the next node below k=2.
    pairs = frame([("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c")])
    assert k_core(pairs, 2).empty


def test_k_core_result_satisfies_threshold_and_is_maximal():
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = frame([(f"u{u}", f"i{i}") for u, i in rng.integers(0, 40, size=(600, 2))]).drop_duplicates()
    kept = k_core(pairs, 5)
    assert (kept["user_id"].value_counts() >= 5).all() and (kept["item_id"].value_counts() >= 5).all()
    # Maximal: any removed row belongs to a user or item that is not in the core.
    removed = pairs.merge(kept, how="left", indicator=True).query("_merge == 'left_only'")
    users, items = set(kept["user_id"]), set(kept["item_id"])
    assert all((u not in users) or (i not in items) for u, i in removed[["user_id", "item_id"]].to_numpy())


def test_implicit_feedback_counts_repeated_ratings_once():
    ratings = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "a", "a"],
                            "rating": [1, 5, 3], "timestamp": [1, 2, 3]})
    assert len(to_implicit(ratings)) == 2
