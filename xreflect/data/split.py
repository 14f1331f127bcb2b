"""Per-user random splits, evaluation candidates and the stored split format.

A split file `data/splits/split_<k>.npz` holds, with users and items as contiguous indices
(rows of data/filtered/users.csv and data/filtered/items.jsonl):
  train, valid, test   int32 [n, 2] (user, item) pairs
  eval_negatives       int32 [n_users, n_negatives]: items the user never interacted with, drawn
                       once per split and shared by validation and test candidates
  n_users, n_items     scalars
Training negatives are drawn elsewhere (xreflect.negatives) from the items that are neither a
positive of the user (in any part) nor one of the user's evaluation negatives, as the paper requires.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xreflect.io import write_npz


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    eval_negatives: np.ndarray
    n_users: int
    n_items: int

    def positives(self, part: str) -> np.ndarray:
        return {"train": self.train, "valid": self.valid, "test": self.test}[part]

    def save(self, path: str | Path) -> None:
        write_npz(path, train=self.train, valid=self.valid, test=self.test,
                  eval_negatives=self.eval_negatives, n_users=self.n_users, n_items=self.n_items)

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        with np.load(path) as data:
            return cls(data["train"], data["valid"], data["test"], data["eval_negatives"],
                       int(data["n_users"]), int(data["n_items"]))


def split_counts(n: np.ndarray, ratio: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test sizes per user: the ratio's share rounded half up, at least one each,
    and at least one interaction left for training."""
    total = float(sum(ratio))
    n_valid = np.maximum(1, np.floor(n * ratio[1] / total + 0.5)).astype(np.int64)
    n_test = np.maximum(1, np.floor(n * ratio[2] / total + 0.5)).astype(np.int64)
    if np.any(n - n_valid - n_test < 1):
        raise ValueError("a user has too few interactions for a train/valid/test split "
                         f"(needs >= 3, smallest has {int(n.min())}); raise min_interactions")
    return n_valid, n_test


def split_user_interactions(pairs: np.ndarray, ratio: tuple[float, float, float],
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle each user's interactions and cut them into train/valid/test by `ratio`."""
    order = np.lexsort((rng.random(len(pairs)), pairs[:, 0]))
    pairs = pairs[order]
    users, starts, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    rank = np.arange(len(pairs)) - np.repeat(starts, counts)  # position within the user's shuffle
    n_valid, n_test = split_counts(counts, ratio)
    rank_test_end = np.repeat(n_test, counts)
    rank_valid_end = rank_test_end + np.repeat(n_valid, counts)
    test = pairs[rank < rank_test_end]
    valid = pairs[(rank >= rank_test_end) & (rank < rank_valid_end)]
    train = pairs[rank >= rank_valid_end]
    return train, valid, test


def sample_eval_negatives(pairs: np.ndarray, n_users: int, n_items: int, n_negatives: int,
                          rng: np.random.Generator, chunk: int = 2048) -> np.ndarray:
    """`n_negatives` distinct items per user, uniformly among the items the user never interacted
    with: random keys per (user, item), positives pushed to +inf, the smallest keys kept."""
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    short = np.flatnonzero(n_items - counts < n_negatives)
    if short.size:
        raise ValueError(f"user index {int(short[0])} has only {n_items - counts[short[0]]} items "
                         f"without an interaction, fewer than eval_negatives={n_negatives}; "
                         "lower datasets.<name>.eval_negatives in params.yaml")
    positive = np.zeros((n_users, n_items), dtype=bool)
    positive[pairs[:, 0], pairs[:, 1]] = True
    out = np.empty((n_users, n_negatives), dtype=np.int32)
    for start in range(0, n_users, chunk):
        keys = rng.random((min(chunk, n_users - start), n_items), dtype=np.float32)
        keys[positive[start:start + chunk]] = np.inf
        chosen = np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]
        out[start:start + chunk] = np.sort(chosen, axis=1)
    return out


def make_split(pairs: np.ndarray, n_users: int, n_items: int, ratio: tuple[float, float, float],
               n_negatives: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    train, valid, test = split_user_interactions(pairs, ratio, rng)
    negatives = sample_eval_negatives(pairs, n_users, n_items, n_negatives, rng)
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return Split(as32(train), as32(valid), as32(test), negatives, n_users, n_items)


@dataclass(frozen=True)
class Candidates:
    """Each user's evaluation candidates as a padded matrix: held-out positives, then negatives."""
    items: np.ndarray   # int64 [n_users, width]
    labels: np.ndarray  # bool  [n_users, width]; True for held-out positives
    mask: np.ndarray    # bool  [n_users, width]; False for padding


def candidates(split: Split, part: str) -> Candidates:
    """Candidates of `part` ("valid" or "test") for every user: that part's positives + negatives."""
    pos = split.positives(part)
    order = np.argsort(pos[:, 0], kind="stable")
    pos = pos[order]
    counts = np.bincount(pos[:, 0], minlength=split.n_users)
    width_pos = int(counts.max())
    n_neg = split.eval_negatives.shape[1]
    items = np.zeros((split.n_users, width_pos + n_neg), dtype=np.int64)
    mask = np.zeros_like(items, dtype=bool)
    column = np.arange(len(pos)) - np.repeat(np.cumsum(counts) - counts, counts)
    items[pos[:, 0], column] = pos[:, 1]
    mask[pos[:, 0], column] = True
    labels = mask.copy()
    items[:, width_pos:] = split.eval_negatives
    mask[:, width_pos:] = True
    return Candidates(items, labels, mask)
