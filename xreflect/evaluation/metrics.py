"""Precision@K, Recall@K and NDCG@K: the one implementation behind validation, test and the
global-popularity row.

Ties are broken against the positives: among equal scores the negatives rank first, so a constant
scorer gets zero hits (whenever a user has at least K negatives) instead of a perfect score.
Padding (mask False) is never ranked.
"""
from __future__ import annotations

import numpy as np
import torch

def ranked_top_labels(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """bool [n_users, k]: whether the candidate at each of the first k ranks is a positive, with
    ties broken against the positives.

    No full sort. topk gives the k best score values v_0 >= ... >= v_{k-1}, which do not depend on
    tie-breaking. Rank j's tie group starts after the candidates scoring strictly more than v_j,
    all of which are among the top k (so they are counted there); within the group the negatives
    come first, so rank j holds a positive exactly when j - n_greater(v_j) >= n_neg_equal(v_j).
    n_neg_equal is read from the top k negative scores: it is exact whenever it could matter
    (when it is smaller than k minus the negatives scoring more)."""
    values = torch.topk(scores, k, dim=1).values                                        # [U, k]
    neg_values = torch.topk(scores.masked_fill(positive, -torch.inf), k, dim=1).values  # [U, k]
    greater = (values.unsqueeze(1) > values.unsqueeze(2)).sum(2)
    neg_equal = (neg_values.unsqueeze(1) == values.unsqueeze(2)).sum(2)
    rank = torch.arange(k, device=scores.device)
    return (rank - greater >= neg_equal) & torch.isfinite(values)


def hit_metrics(ranked: torch.Tensor, n_pos: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Mean over users of P/R/NDCG@k, from each user's ranked hits (bool [U, >= 0 columns], best
    first; fewer than max(ks) columns when users have fewer candidates) and positives count (>= 1)."""
    ranked, n_pos = ranked.double(), n_pos.double()
    discounts = 1.0 / torch.log2(torch.arange(2, max(ks) + 2, device=ranked.device, dtype=torch.float64))
    out = {}
    for k in ks:
        hits = ranked[:, :k]
        ideal = torch.cumsum(discounts[:k], 0)[(torch.clamp(n_pos, max=k) - 1).long()]
        out[f"precision@{k}"] = float((hits.sum(1) / k).mean())
        out[f"recall@{k}"] = float((hits.sum(1) / n_pos).mean())
        out[f"ndcg@{k}"] = float(((hits * discounts[:hits.shape[1]]).sum(1) / ideal).mean())
    return out


def torch_topk_metrics(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                       ks: list[int], chunk: int = 1024) -> dict[str, float]:
    """Metrics of candidate lists ([n_users, n_candidates] scores, labels, mask) on any device:
    under 1 s for 6,040 users x 1,000+ candidates. Users without a positive are left out."""
    scores = torch.where(mask, scores.float(), torch.tensor(-torch.inf, device=scores.device))
    positive = labels & mask
    k_max = min(max(ks), scores.shape[1])
    ranked = torch.cat([ranked_top_labels(scores[i:i + chunk], positive[i:i + chunk], k_max)
                        for i in range(0, len(scores), chunk)])
    n_pos = positive.sum(1)
    has = n_pos > 0
    return hit_metrics(ranked[has], n_pos[has], ks)


def topk_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, ks: list[int]) -> dict[str, float]:
    """torch_topk_metrics for numpy arrays."""
    return torch_topk_metrics(torch.as_tensor(np.asarray(scores)), torch.as_tensor(np.asarray(labels, dtype=bool)),
                              torch.as_tensor(np.asarray(mask, dtype=bool)), ks)
