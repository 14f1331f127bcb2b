"""Implicit feedback and the k-core filter."""
from __future__ import annotations

import pandas as pd

from xreflect.core.config import ParamsError


def to_implicit(interactions: pd.DataFrame) -> pd.DataFrame:
    """Every rating is an interaction (He et al. 2017); repeated (user, item) pairs count once."""
    return interactions[["user_id", "item_id"]].drop_duplicates(ignore_index=True)


def k_core(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep users and items with at least k interactions, repeating until no row is removed
    (removing a sparse item can push a user below k, and vice versa)."""
    if k < 1:
        raise ParamsError(f"params.yaml: datasets.<dataset>.min_interactions must be >= 1, got {k}")
    while True:
        user_counts = pairs["user_id"].map(pairs["user_id"].value_counts())
        item_counts = pairs["item_id"].map(pairs["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return pairs.reset_index(drop=True)
        pairs = pairs[keep]
