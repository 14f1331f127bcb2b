"""Precision@K, Recall@K and NDCG@K over each user's candidate list.

Ties are broken against the positives: among equal scores the negatives rank first, so a constant
scorer gets zero hits (whenever a user has at least K negatives) instead of a perfect score.
"""
from __future__ import annotations

import numpy as np


def rank_candidates(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Labels of each user's candidates in ranked order (best first); padding goes last."""
    scores = np.where(mask, scores.astype(np.float64), -np.inf)
    # lexsort: last key is primary -> by score descending, then negatives (label 0) before positives,
    # then padding after every real candidate.
    order = np.lexsort((~mask, labels, -scores), axis=-1)
    return np.take_along_axis(labels & mask, order, axis=-1)


def per_user_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                     ks: list[int]) -> dict[str, np.ndarray]:
    """Per-user precision@k, recall@k, ndcg@k for users with at least one positive."""
    ranked = rank_candidates(scores, labels, mask)
    n_pos = (labels & mask).sum(axis=1)
    has_pos = n_pos > 0
    ranked, n_pos = ranked[has_pos], n_pos[has_pos]
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hits = ranked[:, :k]
        n_hits = hits.sum(axis=1)
        dcg = (hits * discounts[:hits.shape[1]]).sum(axis=1)  # a user may have fewer than k candidates
        ideal = np.cumsum(discounts[:k])[np.minimum(n_pos, k) - 1]
        out[f"precision@{k}"] = n_hits / k
        out[f"recall@{k}"] = n_hits / n_pos
        out[f"ndcg@{k}"] = dcg / ideal
    return out


def topk_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 ks: list[int]) -> dict[str, float]:
    """Mean over users of per_user_metrics."""
    return {name: float(values.mean()) for name, values in per_user_metrics(scores, labels, mask, ks).items()}
