"""Full-ranking protocol: candidates, tie order, metrics, and the train -> evaluate path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

from xreflect.data.split import Split
from xreflect.evaluation.full_ranking import NO_ITEM, excluded_items, full_metrics, full_top_items, top_items

from tests.training.test_train import SMALL, write_stage_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_split() -> Split:
    """6 items. User 0: train {0, 1}, valid {2}, test {3}. User 1: train {5}, valid {4}, test {0, 1}."""
    pairs = lambda *p: np.array(p, dtype=np.int32)  # noqa: E731
    none = np.full((2, 1), -1, np.int32)  # the sampled protocol's negatives play no part here
    return Split(train=pairs([0, 0], [0, 1], [1, 5]), valid=pairs([0, 2], [1, 4]), test=pairs([0, 3], [1, 0], [1, 1]),
                 valid_negatives=none, test_negatives=none, n_users=2, n_items=6)


SCORES = torch.tensor([[9.0, 8.0, 7.0, 1.0, 5.0, 0.0],
                       [1.0, 4.0, 3.0, 2.0, 6.0, 9.0]])


def test_candidates_exclude_training_items_and_at_test_validation_items():
    split = hand_split()
    assert np.flatnonzero(excluded_items(split, "valid")[0]).tolist() == [0, 1]
    assert np.flatnonzero(excluded_items(split, "test")[0]).tolist() == [0, 1, 2]
    assert np.flatnonzero(excluded_items(split, "test")[1]).tolist() == [4, 5]


def test_top_items_by_hand():
    split = hand_split()
    # User 0 at validation: candidates 2 (7), 3 (1), 4 (5), 5 (0) -> 2, 4, 3. At test item 2 is out too.
    # User 1 at validation: candidates 0..4 -> 4 (6), 1 (4), 2 (3). At test item 4 is out -> 1, 2, 3.
    assert full_top_items(SCORES, split, "valid", 3).tolist() == [[2, 4, 3], [4, 1, 2]]
    assert full_top_items(SCORES, split, "test", 3).tolist() == [[4, 3, 5], [1, 2, 3]]
    # Fewer candidates than k: the row is padded, never filled with an excluded item.
    assert full_top_items(SCORES, split, "test", 6).tolist() == [[4, 3, 5, NO_ITEM, NO_ITEM, NO_ITEM],
                                                                 [1, 2, 3, 0, NO_ITEM, NO_ITEM]]


def test_metrics_by_hand():
    split = hand_split()
    top = full_top_items(SCORES, split, "test", 3)
    m = full_metrics(split, "test", top, [1, 3])
    # User 0: [4, 3, 5], positive 3 at rank 2 -> P@1 0, R@3 1, NDCG@3 = (1/log2 3) / 1.
    # User 1: [1, 2, 3], positives {0, 1}: 1 at rank 1 -> P@1 1, R@1 1/2, R@3 1/2,
    #         NDCG@3 = 1 / (1 + 1/log2 3).
    assert m["precision@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1 / (1 + 1 / np.log2(3))) / 2)


def test_ties_go_against_the_positives():
    """A constant scorer gets no hits: among equal scores the user's non-positive items rank first."""
    split = hand_split()
    top = full_top_items(torch.zeros(2, 6), split, "test", 2)
    assert top.tolist() == [[4, 5], [2, 3]]
    assert full_metrics(split, "test", top, [1, 2])["recall@2"] == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([1, 2, 3, 1000]), k=st.sampled_from([1, 5, 30]))
def test_top_items_equal_a_full_sort_with_ties_and_exclusions(seed, levels, k):
    """Against a plain full sort by (score descending, positive last, item index)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 7, 25
    scores = rng.integers(0, levels, (n_users, n_items)).astype(np.float32)
    excluded = rng.random((n_users, n_items)) < 0.3
    excluded[0] = True  # a user without candidates
    excluded[1, 2:] = True  # and one with fewer than k
    positive = (rng.random((n_users, n_items)) < 0.2) & ~excluded
    got = top_items(torch.from_numpy(scores), torch.from_numpy(excluded), torch.from_numpy(positive), k, chunk=3)
    for u in range(n_users):
        candidates = np.flatnonzero(~excluded[u])
        order = candidates[np.lexsort((candidates, positive[u, candidates], -scores[u, candidates]))][:k]
        expected = order.tolist() + [NO_ITEM] * (min(k, n_items) - len(order))
        assert got[u].tolist() == expected


def test_a_list_ranking_an_excluded_item_or_too_short_is_refused():
    split = hand_split()
    with pytest.raises(ValueError, match="interacted with in training or validation"):
        full_metrics(split, "test", np.array([[2, 3], [1, 2]]), [1, 2])  # item 2 is user 0's valid item
    with pytest.raises(ValueError, match="need the top 10"):
        full_metrics(split, "test", np.array([[3], [1]]), [1, 10])


def test_train_and_evaluate_stages_report_both_protocols(tmp_path, monkeypatch):
    import stages.evaluate as evaluate  # noqa: PLC0415
    import stages.train as train  # noqa: PLC0415
    split = write_stage_inputs(tmp_path, {"popularity": [], "text_image": ["description", "image"]},
                               {**SMALL, "lr": [0.01], "dropout": [0.1], "max_epochs": 5})
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params.update(dataset="demo", backbone="offline", datasets={"demo": {"split_ratio": [8, 1, 1]}},
                  run=["popularity", "text_image"],
                  evaluate={"ks": [1, 10], "baseline": "popularity"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / "cache"))
    for strategy in ("popularity", "text_image"):
        train.main(["--strategy", strategy])
    top = np.load(tmp_path / "models/popularity/split_0.npz")["full_test_top"]
    # Item Popularity under full ranking: each user's unseen, non-validation items by training count.
    counts = np.bincount(split.train[:, 1], minlength=split.n_items)
    excluded = excluded_items(split, "test")
    for user in range(split.n_users):
        expected = [i for i in np.argsort(-counts, kind="stable") if not excluded[user, i]]
        assert counts[top[user]].tolist() == counts[expected[:10]].tolist()
    evaluate.main()
    summary = json.loads((tmp_path / "metrics/summary.json").read_text())
    detail = json.loads((tmp_path / "metrics/detail.json").read_text())
    assert set(summary) == {"popularity", "text_image", "popularity_global", "full_ranking"}
    assert set(summary["full_ranking"]) == {"popularity", "text_image"}
    for results in (detail["results"], detail["full_results"]):
        assert len(results["text_image"]["recall@10"]["per_split"]) == 1
    assert summary["full_ranking"]["popularity"]["recall@10"] == pytest.approx(
        full_metrics(split, "test", top, [1, 10])["recall@10"], abs=1e-6)
    report = (tmp_path / "metrics/report.md").read_text()
    assert "## Top-10, full ranking" in report and "## Top-10, sampled candidates" in report
    assert "| Item Popularity (unseen items) |" in report  # not "sampled candidates" under full ranking
