"""The full-ranking protocol, beside the paper's sampled one.

Every item the user did not interact with in training is a candidate: at validation the held-out
validation items are the positives among all of them; at test the validation items are excluded
too and the test items are the positives. Scoring the whole catalog per user costs a
[n_users, n_items] score matrix (6,040 x 3,706 at MovieLens-1M scale), too big to keep for every
strategy and split, so the train stage keeps only each user's top-k item indices (`top_items`) and
the evaluate stage turns them into P/R/NDCG with xreflect.evaluation.metrics.hit_metrics (`full_metrics`).
"""
from __future__ import annotations

import numpy as np
import torch

from xreflect.core.errors import DataError
from xreflect.data.split import Split
from xreflect.evaluation.metrics import hit_metrics

NO_ITEM = -1  # fills a user's top-k row when fewer than k items are candidates


def pair_matrix(pairs: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    out = np.zeros((n_users, n_items), dtype=bool)
    out[pairs[:, 0], pairs[:, 1]] = True
    return out


def excluded_items(split: Split, part: str) -> np.ndarray:
    """bool [n_users, n_items]: items that are never candidates of `part`: the user's training
    items, and at test also the user's validation items."""
    parts = {"valid": [split.train], "test": [split.train, split.valid]}[part]
    return pair_matrix(np.concatenate(parts), split.n_users, split.n_items)


def top_items(scores: torch.Tensor, excluded: torch.Tensor, positive: torch.Tensor, k: int,
              chunk: int = 1024) -> np.ndarray:
    """int32 [n_users, k]: each user's k best candidate items, best first, NO_ITEM where the user
    has fewer than k candidates. Ties are broken as in xreflect.evaluation.metrics (against the positives:
    among equal scores the user's non-positive items come first), then by item index, so a
    constant scorer gets no hits here either. `positive` is used for nothing but that tie order.

    No full sort: only the items scoring at least a user's k-th best score can be in its top k
    (usually exactly k of them; more only with ties), so those are gathered with topk and ordered
    by three stable sorts: item index, then non-positives first, then score."""
    k = min(k, scores.shape[1])
    out = []
    for start in range(0, len(scores), chunk):
        rows = slice(start, start + chunk)
        s = scores[rows].float().masked_fill(excluded[rows], -torch.inf)
        kth = torch.topk(s, k, dim=1).values[:, -1:]
        width = int((s >= kth).sum(1).max())  # k unless the k-th score is tied
        items = torch.topk(s, width, dim=1).indices.sort(dim=1).values
        by_label = torch.argsort(positive[rows].gather(1, items).to(torch.int8), dim=1, stable=True)
        items = items.gather(1, by_label)
        by_score = torch.argsort(s.gather(1, items), dim=1, descending=True, stable=True)[:, :k]
        top = items.gather(1, by_score)
        top[~torch.isfinite(s.gather(1, top))] = NO_ITEM
        out.append(top.to(torch.int32).cpu())
    return torch.cat(out).numpy()


def full_top_items(scores: torch.Tensor, split: Split, part: str, k: int) -> np.ndarray:
    """top_items of a [n_users, n_items] score matrix under the full protocol of `part`."""
    device = scores.device
    excluded = torch.as_tensor(excluded_items(split, part), device=device)
    positive = torch.as_tensor(pair_matrix(split.positives(part), split.n_users, split.n_items), device=device)
    return top_items(scores, excluded, positive, k)


def full_metrics(split: Split, part: str, top: np.ndarray, ks: list[int], where: str = "top items") -> dict[str, float]:
    """P/R/NDCG@ks of each user's ranked top items (from full_top_items) against `part`'s held-out
    items. Refuses a list that ranks an excluded item or is shorter than max(ks)."""
    if top.shape[0] != split.n_users or top.shape[1] < min(max(ks), split.n_items):
        raise DataError(f"{where}: full-ranking top items of shape {top.shape}, but the split has "
                         f"{split.n_users} users and the metrics need the top {max(ks)}; rerun the train "
                         "stage for this strategy (it keeps the top max(evaluate.ks))")
    ranked_items = np.maximum(top, 0)
    real = top != NO_ITEM
    if (excluded_items(split, part)[np.arange(split.n_users)[:, None], ranked_items] & real).any():
        raise DataError(f"{where}: a ranked item is one the user interacted with in training"
                         f"{' or validation' if part == 'test' else ''}; rerun the train stage for this strategy")
    positive = pair_matrix(split.positives(part), split.n_users, split.n_items)
    hits = positive[np.arange(split.n_users)[:, None], ranked_items] & real
    n_pos = positive.sum(axis=1)
    users = n_pos > 0
    return hit_metrics(torch.from_numpy(hits[users]), torch.from_numpy(n_pos[users]), ks)
