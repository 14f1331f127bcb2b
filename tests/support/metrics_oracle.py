"""A plain, fully sorting implementation of P/R/NDCG@K (lexsort, ties against the positives), the
oracle that the sort-free xreflect.evaluation.metrics is checked against."""
from __future__ import annotations

import numpy as np


def oracle_topk_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, ks: list[int]) -> dict[str, float]:
    scores = np.where(mask, scores.astype(np.float64), -np.inf)
    # lexsort: last key is primary -> by score descending, then negatives before positives, padding last.
    order = np.lexsort((~mask, labels, -scores), axis=-1)
    ranked = np.take_along_axis(labels & mask, order, axis=-1)
    n_pos = (labels & mask).sum(axis=1)
    ranked, n_pos = ranked[n_pos > 0], n_pos[n_pos > 0]
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    out = {}
    for k in ks:
        hits = ranked[:, :k]
        ideal = np.cumsum(discounts[:k])[np.minimum(n_pos, k) - 1]
        out[f"precision@{k}"] = float((hits.sum(axis=1) / k).mean())
        out[f"recall@{k}"] = float((hits.sum(axis=1) / n_pos).mean())
        out[f"ndcg@{k}"] = float(((hits * discounts[:hits.shape[1]]).sum(axis=1) / ideal).mean())
    return out
