"""Item Popularity, under the sampled protocol of every other row and as one global top-K."""
from __future__ import annotations

import numpy as np
import torch

from xreflect.data.split import Split, candidates
from xreflect.full_ranking import full_top_items
from xreflect.metrics import hit_metrics, topk_metrics
from xreflect.training.results import StrategyResult


def item_counts(split: Split) -> np.ndarray:
    return np.bincount(split.train[:, 1], minlength=split.n_items).astype(np.float32)


def popularity(split: Split, ks: list[int] | None = None, full_k: int | None = None) -> StrategyResult:
    """Item Popularity: an item's score is its number of training interactions; nothing is trained.
    With `full_k`, also its top-`full_k` test items under the full-ranking protocol."""
    counts = item_counts(split)
    valid, test = candidates(split, "valid"), candidates(split, "test")
    valid_scores = counts[valid.items]
    metrics = topk_metrics(valid_scores, valid.labels, valid.mask, ks or [1, 10])
    full_top = None
    if full_k is not None:
        scores = torch.from_numpy(counts).expand(split.n_users, split.n_items)
        full_top = full_top_items(scores, split, "test", full_k)
    return StrategyResult([], None, valid_scores, counts[test.items], metrics, full_top)


def global_popularity_metrics(split: Split, ks: list[int]) -> dict[str, float]:
    """The most popular training items as one global top-K over the whole catalog, items the user
    already saw not removed, scored against the user's test positives. This is the reading of the
    paper's Item Popularity row that matches its numbers; the sampled protocol of the other rows
    is the `popularity` strategy."""
    # Ties in popularity broken by item index, fixed for everyone (a global list has one order).
    ranking = np.lexsort((np.arange(split.n_items), -item_counts(split)))
    in_test = np.zeros((split.n_users, split.n_items), dtype=bool)
    in_test[split.test[:, 0], split.test[:, 1]] = True
    n_pos = in_test.sum(axis=1)
    users = n_pos > 0
    ranked = in_test[users][:, ranking[:max(ks)]]
    return hit_metrics(torch.from_numpy(ranked), torch.from_numpy(n_pos[users]), ks)
