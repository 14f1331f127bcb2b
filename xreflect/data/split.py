"""Per-user random splits, evaluation candidates and the stored split format.

A split file `data/splits/split_<k>.npz` (format 2) holds, with users and items as contiguous
indices (rows of data/filtered/users.csv and data/filtered/items.jsonl):
  train, valid, test   int32 [n, 2] (user, item) pairs
  eval_negatives_mode  how the evaluation negatives were drawn (params.yaml split.eval_negatives):
                       `disjoint` (a file without this key is one) or `shared`
  valid_negatives      (disjoint) int32 [n_users, n_negatives]: the user's validation negatives
  test_negatives       (disjoint) int32 [n_users, n_negatives]: the user's test negatives, disjoint
                       from the validation ones, so selection never sees the negatives the test uses
  eval_negatives       (shared) int32 [n_users, n_negatives]: one set per user that validation and
                       test both use
                       All are items the user never interacted with; -1 pads the rows of the few
                       users with too few such items (see negatives_per_set)
  n_users, n_items     scalars
  seed                 the seed the split was drawn with (training seeds itself from it per split)
  format_version       2; format 1 (a shared set, from before the mode existed) is refused with the
                       fix, never misread. A split of the other mode than params.yaml's is refused too.
Training negatives are drawn elsewhere (xreflect.training.negatives) from the items that are neither a
positive of the user (in any part) nor one of the user's validation or test negatives, as the
paper requires: a disjoint split leaves the pool 2 x n_negatives fewer items than a shared one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xreflect.core.config import ParamsError, dataset_entry
from xreflect.core.errors import DataError
from xreflect.core.io import log_stderr, write_json, write_npz
from xreflect.core.paths import FILTERED_DIR, SPLITS_DIR, SPLITS_REPORT

FORMAT_VERSION = 2
PAD = -1  # fills negative rows of users with fewer than n_negatives per set
MODES = ("disjoint", "shared")
DEFAULT_MODE = "shared"


class SplitModeError(DataError):
    """A split file drawn under the other split.eval_negatives mode than params.yaml's."""


def eval_negatives_mode(params: dict) -> str:
    """params.yaml's split.eval_negatives, checked."""
    mode = (params.get("split") or {}).get("eval_negatives", DEFAULT_MODE)
    if mode not in MODES:
        raise ParamsError(f"params.yaml: split.eval_negatives={mode!r}; allowed values are {', '.join(MODES)}")
    return mode


def stored_mode(path: str | Path) -> str:
    """The eval_negatives_mode a split file was written under (format 2 files without it: disjoint)."""
    with np.load(path) as data:
        return str(data["eval_negatives_mode"]) if "eval_negatives_mode" in data.files else "disjoint"


def require_mode(path: str | Path, mode: str) -> None:
    """Refuse a split file of the other mode, with the fix."""
    got = stored_mode(path)
    if got != mode:
        raise SplitModeError(f"{path}: split drawn with split.eval_negatives={got}, but params.yaml says {mode}; "
                             "rebuild the splits with `dvc repro -f split` (or `python -m stages.split`), or set "
                             f"split.eval_negatives back to {got}")


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
    eval_negatives_mode: str = "disjoint"  # "shared": valid_negatives and test_negatives are one set

    def __post_init__(self) -> None:
        if self.eval_negatives_mode not in MODES:
            raise ValueError(f"eval_negatives_mode {self.eval_negatives_mode!r}; allowed values are {MODES}")
        if self.eval_negatives_mode == "shared" and not np.array_equal(self.valid_negatives, self.test_negatives):
            raise ValueError("a shared-mode split has one set of evaluation negatives: valid_negatives and "
                             "test_negatives must be equal")

    def positives(self, part: str) -> np.ndarray:
        return {"train": self.train, "valid": self.valid, "test": self.test}[part]

    def negatives(self, part: str) -> np.ndarray:
        return {"valid": self.valid_negatives, "test": self.test_negatives}[part]

    def save(self, path: str | Path) -> None:
        if self.eval_negatives_mode == "shared":
            negatives = {"eval_negatives": self.valid_negatives}
        else:
            negatives = {"valid_negatives": self.valid_negatives, "test_negatives": self.test_negatives}
        write_npz(path, train=self.train, valid=self.valid, test=self.test, **negatives,
                  n_users=self.n_users, n_items=self.n_items, seed=self.seed,
                  eval_negatives_mode=np.array(self.eval_negatives_mode), format_version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | Path, mode: str | None = None) -> "Split":
        """The split in `path`; with `mode` (params.yaml's split.eval_negatives), a split of the
        other mode is refused with the fix."""
        try:
            archive = np.load(path)
        except (OSError, ValueError) as err:  # not an npz (a truncated copy, a stray file)
            raise DataError(f"{path}: not a readable split ({err}); rebuild the splits with "
                            "`dvc repro -f split`") from err
        with archive as data:
            version = int(data["format_version"]) if "format_version" in data.files else 1
            if version != FORMAT_VERSION:
                raise DataError(f"{path}: split format {version}, but this code reads format {FORMAT_VERSION} "
                                 "(separate validation and test negatives); rebuild the splits with "
                                 "`dvc repro -f split` (or `python stages/split.py`)")
            stored = str(data["eval_negatives_mode"]) if "eval_negatives_mode" in data.files else "disjoint"
            if mode is not None and stored != mode:
                require_mode(path, mode)
            if stored == "shared":
                valid_negatives = test_negatives = data["eval_negatives"]
            else:
                valid_negatives, test_negatives = data["valid_negatives"], data["test_negatives"]
            return cls(data["train"], data["valid"], data["test"], valid_negatives, test_negatives,
                       int(data["n_users"]), int(data["n_items"]), int(data["seed"]), stored)


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


def negatives_per_set(counts: np.ndarray, n_items: int, n_negatives: int, sets: int = 2) -> np.ndarray:
    """Evaluation negatives per user and set: `n_negatives`, or for a user with fewer than
    sets * n_negatives + 1 items never interacted with, (those items - 1) // sets, so that two sets
    (disjoint mode) stay disjoint and at least one item is left for training negatives."""
    unobserved = n_items - counts
    per_set = np.minimum(n_negatives, (unobserved - 1) // sets)
    short = np.flatnonzero(per_set < 1)
    if short.size:
        what = ("a validation negative, a test negative and a training negative" if sets == 2 else
                "an evaluation negative and a training negative")
        raise ParamsError(f"user index {int(short[0])} has only {int(unobserved[short[0]])} item(s) without an "
                         f"interaction; it needs at least {sets + 1} ({what}); raise "
                         "datasets.<name>.min_interactions or filter such users")
    return per_set


def sample_eval_negatives(pairs: np.ndarray, n_users: int, n_items: int, n_negatives: int,
                          rng: np.random.Generator, chunk: int = 2048,
                          mode: str = "disjoint") -> tuple[np.ndarray, np.ndarray]:
    """Evaluation negatives (validation, test) per user, uniformly among the items the user never
    interacted with: random keys per (user, item), positives pushed to +inf; the smallest keys go
    to validation. `disjoint`: the next ones to test (two disjoint sets of `n_negatives` distinct
    items); `shared`: test gets the validation set itself. Rows are sorted, PAD-filled for users
    short of items (negatives_per_set)."""
    if mode not in MODES:
        raise ValueError(f"eval_negatives mode {mode!r}; allowed values are {MODES}")
    sets = 2 if mode == "disjoint" else 1
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    per_set = negatives_per_set(counts, n_items, n_negatives, sets)
    positive = np.zeros((n_users, n_items), dtype=bool)
    positive[pairs[:, 0], pairs[:, 1]] = True
    width = min(sets * n_negatives, n_items)
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
        # Clipped columns only ever land on unused (padded) entries: sets * m <= width - 1 or m <= width.
        valid[rows] = _sorted_padded(np.take_along_axis(ranked, np.minimum(column, width - 1)[None], 1), used)
        if sets == 2:
            test[rows] = _sorted_padded(np.take_along_axis(ranked, np.minimum(m + column, width - 1), 1), used)
    if sets == 1:
        test = valid
    return valid, test


def _sorted_padded(items: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Each row's used items sorted, then PAD."""
    big = np.iinfo(np.int64).max
    out = np.sort(np.where(used, items, big), axis=1)
    return np.where(out == big, PAD, out).astype(np.int32)


def make_split(pairs: np.ndarray, n_users: int, n_items: int, ratio: tuple[float, float, float],
               n_negatives: int, seed: int, mode: str = "disjoint") -> Split:
    rng = np.random.default_rng(seed)
    train, valid, test = split_user_interactions(pairs, ratio, rng)
    valid_negatives, test_negatives = sample_eval_negatives(pairs, n_users, n_items, n_negatives, rng, mode=mode)
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return Split(as32(train), as32(valid), as32(test), valid_negatives, test_negatives, n_users, n_items, seed,
                 mode)


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
    mode = eval_negatives_mode(params)
    if n_splits < 1:
        raise ParamsError("params.yaml: split.n_splits must be >= 1")
    pairs = np.load(FILTERED_DIR / "pairs.npy")
    n_users, n_items = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
    sizes = {}
    for k in range(n_splits):
        split = make_split(pairs, n_users, n_items, tuple(entry["split_ratio"]),
                           int(entry["eval_negatives"]), seed=int(config.get("seed", 0)) + k, mode=mode)
        split.save(SPLITS_DIR / f"split_{k}.npz")
        # Users with fewer unobserved items than the full negative set(s) get smaller ones.
        short = int((split.test_negatives == PAD).any(axis=1).sum())
        sizes[f"split_{k}"] = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                               "users_with_fewer_negatives": short}
        log_stderr(f"split {k}: {sizes[f'split_{k}']}")
    write_json(SPLITS_REPORT, {"dataset": name, "split_ratio": entry["split_ratio"],
                               "eval_negatives": int(entry["eval_negatives"]), "eval_negatives_mode": mode, **sizes})
