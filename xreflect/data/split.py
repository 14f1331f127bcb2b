"""Per-user random splits, evaluation candidates and the stored split format.

A split file `data/splits/split_<k>.npz` (format 2) holds, with users and items as contiguous
indices (rows of data/filtered/users.csv and data/filtered/items.jsonl):
  train, valid, test   int32 [n, 2] (user, item) pairs
  valid_negatives      int32 [n_users, n_negatives]: the user's validation negatives
  test_negatives       int32 [n_users, n_negatives]: the user's test negatives, disjoint from the
                       validation ones, so selection never sees the negatives the test uses; both
                       are items the user never interacted with; -1 pads the rows of the few users
                       with too few such items (see sample_eval_negatives)
  n_users, n_items     scalars
  seed                 the seed the split was drawn with (training seeds itself from it per split)
  format_version       2; format 1 (one `eval_negatives` set shared by validation and test) is
                       refused with the fix, never misread
Training negatives are drawn elsewhere (xreflect.training.negatives) from the items that are neither a
positive of the user (in any part) nor one of the user's validation or test negatives, as the
paper requires.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xreflect.core.errors import DataError
from xreflect.core.config import ParamsError, dataset_entry
from xreflect.core.io import log_stderr, write_json, write_npz
from xreflect.core.paths import FILTERED_DIR, SPLITS_DIR, SPLITS_REPORT

FORMAT_VERSION = 2
PAD = -1  # fills negative rows of users with fewer than n_negatives per set


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_negatives: np.ndarray
    test_negatives: np.ndarray
    n_users: int
    n_items: int
    seed: int = 0

    def positives(self, part: str) -> np.ndarray:
        return {"train": self.train, "valid": self.valid, "test": self.test}[part]

    def negatives(self, part: str) -> np.ndarray:
        return {"valid": self.valid_negatives, "test": self.test_negatives}[part]

    def save(self, path: str | Path) -> None:
        write_npz(path, train=self.train, valid=self.valid, test=self.test,
                  valid_negatives=self.valid_negatives, test_negatives=self.test_negatives,
                  n_users=self.n_users, n_items=self.n_items, seed=self.seed, format_version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        with np.load(path) as data:
            version = int(data["format_version"]) if "format_version" in data.files else 1
            if version != FORMAT_VERSION:
                raise DataError(f"{path}: split format {version}, but this code reads format {FORMAT_VERSION} "
                                 "(separate validation and test negatives); rebuild the splits with "
                                 "`dvc repro -f split` (or `python stages/split.py`)")
            return cls(data["train"], data["valid"], data["test"], data["valid_negatives"],
                       data["test_negatives"], int(data["n_users"]), int(data["n_items"]), int(data["seed"]))


def split_counts(n: np.ndarray, ratio: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test sizes per user: the ratio's share rounded half up, at least one each,
    and at least one interaction left for training."""
    total = float(sum(ratio))
    n_valid = np.maximum(1, np.floor(n * ratio[1] / total + 0.5)).astype(np.int64)
    n_test = np.maximum(1, np.floor(n * ratio[2] / total + 0.5)).astype(np.int64)
    if np.any(n - n_valid - n_test < 1):
        raise ParamsError("a user has too few interactions for a train/valid/test split "
                          f"(needs >= 3, smallest has {int(n.min())}); raise datasets.<dataset>.min_interactions "
                          "in params.yaml")
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


def negatives_per_set(counts: np.ndarray, n_items: int, n_negatives: int) -> np.ndarray:
    """Validation (and test) negatives per user: `n_negatives`, or for a user with fewer than
    2 * n_negatives + 1 items never interacted with, half of those items minus one, so the two sets
    stay disjoint and at least one item is left for training negatives."""
    unobserved = n_items - counts
    per_set = np.minimum(n_negatives, (unobserved - 1) // 2)
    short = np.flatnonzero(per_set < 1)
    if short.size:
        raise ParamsError(f"user index {int(short[0])} has only {int(unobserved[short[0]])} item(s) without an "
                         "interaction; it needs at least 3 (a validation negative, a test negative and a "
                         "training negative); raise datasets.<name>.min_interactions or filter such users")
    return per_set


def sample_eval_negatives(pairs: np.ndarray, n_users: int, n_items: int, n_negatives: int,
                          rng: np.random.Generator, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of `n_negatives` distinct items per user (validation, test), uniformly among
    the items the user never interacted with: random keys per (user, item), positives pushed to
    +inf; the smallest keys go to validation, the next ones to test. Rows are sorted, PAD-filled
    for users short of items (negatives_per_set)."""
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    per_set = negatives_per_set(counts, n_items, n_negatives)
    positive = np.zeros((n_users, n_items), dtype=bool)
    positive[pairs[:, 0], pairs[:, 1]] = True
    width = min(2 * n_negatives, n_items)
    column = np.arange(n_negatives)
    valid = np.empty((n_users, n_negatives), dtype=np.int32)
    test = np.empty((n_users, n_negatives), dtype=np.int32)
    for start in range(0, n_users, chunk):
        rows = slice(start, min(start + chunk, n_users))
        keys = rng.random((rows.stop - start, n_items), dtype=np.float32)
        keys[positive[rows]] = np.inf
        chosen = np.argpartition(keys, width - 1, axis=1)[:, :width]
        ranked = np.take_along_axis(chosen, np.argsort(np.take_along_axis(keys, chosen, 1), axis=1), 1)
        m = per_set[rows, None]
        used = column < m
        # Clipped columns only ever land on unused (padded) entries: 2 * m <= width - 1.
        valid[rows] = _sorted_padded(np.take_along_axis(ranked, np.minimum(column, width - 1)[None], 1), used)
        test[rows] = _sorted_padded(np.take_along_axis(ranked, np.minimum(m + column, width - 1), 1), used)
    return valid, test


def _sorted_padded(items: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Each row's used items sorted, then PAD."""
    big = np.iinfo(np.int64).max
    out = np.sort(np.where(used, items, big), axis=1)
    return np.where(out == big, PAD, out).astype(np.int32)


def make_split(pairs: np.ndarray, n_users: int, n_items: int, ratio: tuple[float, float, float],
               n_negatives: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    train, valid, test = split_user_interactions(pairs, ratio, rng)
    valid_negatives, test_negatives = sample_eval_negatives(pairs, n_users, n_items, n_negatives, rng)
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return Split(as32(train), as32(valid), as32(test), valid_negatives, test_negatives, n_users, n_items, seed)


@dataclass(frozen=True)
class Candidates:
    """Each user's evaluation candidates as a padded matrix: held-out positives, then that part's negatives."""
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
    negatives = split.negatives(part)
    items = np.zeros((split.n_users, width_pos + negatives.shape[1]), dtype=np.int64)
    mask = np.zeros_like(items, dtype=bool)
    column = np.arange(len(pos)) - np.repeat(np.cumsum(counts) - counts, counts)
    items[pos[:, 0], column] = pos[:, 1]
    mask[pos[:, 0], column] = True
    labels = mask.copy()
    items[:, width_pos:] = np.maximum(negatives, 0)
    mask[:, width_pos:] = negatives != PAD
    return Candidates(items, labels, mask)


def write_splits(params: dict) -> None:
    """The split stage: data/splits/split_<k>.npz for each of split.n_splits seeds, and metrics/splits.json."""
    name, entry = dataset_entry(params)
    config = params.get("split") or {}
    n_splits = int(config.get("n_splits", 5))
    if n_splits < 1:
        raise ParamsError("params.yaml: split.n_splits must be >= 1")
    pairs = np.load(FILTERED_DIR / "pairs.npy")
    n_users, n_items = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
    sizes = {}
    for k in range(n_splits):
        split = make_split(pairs, n_users, n_items, tuple(entry["split_ratio"]),
                           int(entry["eval_negatives"]), seed=int(config.get("seed", 0)) + k)
        split.save(SPLITS_DIR / f"split_{k}.npz")
        # Users with fewer unobserved items than two full negative sets get smaller ones (split.py).
        short = int((split.test_negatives == PAD).any(axis=1).sum())
        sizes[f"split_{k}"] = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                               "users_with_fewer_negatives": short}
        log_stderr(f"split {k}: {sizes[f'split_{k}']}")
    write_json(SPLITS_REPORT, {"dataset": name, "split_ratio": entry["split_ratio"],
                        "eval_negatives": int(entry["eval_negatives"]), **sizes})
