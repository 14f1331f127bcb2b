"""DVC stage `split`: n per-user random splits, each with its stored validation and test negatives.

Reads data/filtered/ and params dataset, datasets, split (split.eval_negatives: one set of
evaluation negatives per user shared by validation and test, or two disjoint ones). Writes
data/splits/split_<k>.npz (format in xreflect/data/split.py, which records the mode) and the
metric metrics/splits.json.
"""
from __future__ import annotations

import sys
from pathlib import Path


import numpy as np

from xreflect.cli import run_stage
from xreflect.config import ParamsError, dataset_entry, load_params
from xreflect.data.split import PAD, eval_negatives_mode, make_split
from xreflect.io import write_json

FILTERED, OUT, REPORT = Path("data/filtered"), Path("data/splits"), Path("metrics/splits.json")


def main() -> None:
    params = load_params()
    name, entry = dataset_entry(params)
    config = params.get("split") or {}
    n_splits = int(config.get("n_splits", 5))
    mode = eval_negatives_mode(params)
    if n_splits < 1:
        raise ParamsError("params.yaml: split.n_splits must be >= 1")
    pairs = np.load(FILTERED / "pairs.npy")
    n_users, n_items = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
    sizes = {}
    for k in range(n_splits):
        split = make_split(pairs, n_users, n_items, tuple(entry["split_ratio"]),
                           int(entry["eval_negatives"]), seed=int(config.get("seed", 0)) + k, mode=mode)
        split.save(OUT / f"split_{k}.npz")
        # Users with fewer unobserved items than the full negative set(s) get smaller ones (split.py).
        short = int((split.test_negatives == PAD).any(axis=1).sum())
        sizes[f"split_{k}"] = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                               "users_with_fewer_negatives": short}
        print(f"split {k}: {sizes[f'split_{k}']}", file=sys.stderr)
    write_json(REPORT, {"dataset": name, "split_ratio": entry["split_ratio"],
                        "eval_negatives": int(entry["eval_negatives"]), "eval_negatives_mode": mode, **sizes})


if __name__ == "__main__":
    run_stage(main)
