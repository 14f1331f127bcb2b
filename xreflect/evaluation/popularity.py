"""Item Popularity's scores (training counts) and its global top-K reading, the one that matches
the paper's Item Popularity figures."""
from __future__ import annotations

import numpy as np
import torch

from xreflect.data.split import Split
from xreflect.evaluation.metrics import hit_metrics


def item_counts(split: Split) -> np.ndarray:
    return np.bincount(split.train[:, 1], minlength=split.n_items).astype(np.float32)


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
