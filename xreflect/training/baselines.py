"""Item Popularity as a trained strategy: the sampled protocol of every other row, and full ranking.
Its global top-K reading is scored in xreflect.evaluation.popularity."""
from __future__ import annotations

import numpy as np
import torch

from xreflect.data.split import Split, candidates
from xreflect.evaluation.full_ranking import full_top_items
from xreflect.evaluation.metrics import topk_metrics
from xreflect.evaluation.popularity import item_counts
from xreflect.training.results import StrategyResult


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
