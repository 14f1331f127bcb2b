"""Training negatives: items a user never interacted with and that are not among the user's
validation or test negatives (the paper requires training and evaluation negatives to be disjoint).
Under split.eval_negatives=shared that is one set of eval_negatives per user; under `disjoint` two,
so the pool is smaller by that many more items (1,000 of MovieLens-1M's 3,416).

Each user's allowed pool is stored once as a CSR (indptr, indices); drawing a negative is then one
uniform integer per sample, `indices[indptr[u] + floor(r * pool_size[u])]`, fully vectorised, with
no rejection loop: the pool already excludes everything that must never be drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xreflect.core.config import ParamsError
from xreflect.data.split import PAD, Split


@dataclass(frozen=True)
class NegativePool:
    """Per-user allowed training negatives in CSR form: user u's items are
    indices[indptr[u]:indptr[u + 1]] (sorted)."""
    indptr: np.ndarray   # int64 [n_users + 1]
    indices: np.ndarray  # int32 [nnz]

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user]:self.indptr[user + 1]]


def forbidden_matrix(split: Split) -> np.ndarray:
    """bool [n_users, n_items]: True where the item must never be a training negative of the user
    (a positive in train, valid or test, or one of the user's validation or test negatives; in a
    shared-mode split these are one set)."""
    forbidden = np.zeros((split.n_users, split.n_items), dtype=bool)
    for part in (split.train, split.valid, split.test):
        forbidden[part[:, 0], part[:, 1]] = True
    for negatives in (split.valid_negatives, split.test_negatives):
        rows, columns = np.nonzero(negatives != PAD)
        forbidden[rows, negatives[rows, columns]] = True
    return forbidden


def negative_pool(split: Split) -> NegativePool:
    allowed = ~forbidden_matrix(split)
    sizes = allowed.sum(axis=1)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        raise ParamsError(f"user index {int(empty[0])} (and {empty.size - 1} more) has no item left for training "
                         "negatives after removing its positives and validation and test negatives; "
                         "lower datasets.<name>.eval_negatives in params.yaml or use split.eval_negatives: shared")
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = np.nonzero(allowed)[1].astype(np.int32)  # row-major, so grouped by user and sorted
    return NegativePool(indptr, indices)


def sample_negatives(pool: NegativePool, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn allowed negative item per entry of `users` (with replacement)."""
    users = np.asarray(users, dtype=np.int64)
    start = pool.indptr[users]
    size = pool.indptr[users + 1] - start
    offset = np.minimum((rng.random(len(users)) * size).astype(np.int64), size - 1)
    return pool.indices[start + offset].astype(np.int64)
