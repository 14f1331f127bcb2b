"""DVC stage `train@<strategy>`: grid-train the two-tower model for one strategy on every split.

Reads params: train, strategies.<strategy>, split.n_splits, evaluate.ks. Reads
data/splits/split_<k>.npz and data/embeddings/<strategy>/<source>.npy for each source the strategy
lists (concatenated in that order; an empty list is Item Popularity, which trains nothing). Writes
models/<strategy>/split_<k>.npz (`test_scores` and `valid_scores` of the selected model, aligned
with candidates(split, part), and `full_test_top`, its top-max(evaluate.ks) test items under the
full-ranking protocol, xreflect/full_ranking.py) and models/<strategy>/selection.json. Finished
grid points are checkpointed outside the stage's outs, under ${XREFLECT_CACHE_DIR:-.cache}/train/,
so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import time

# OpenMP threads that spin while waiting make torch up to 4x slower whenever anything else runs on
# the machine (measured on 2 shared cores); passive waiting costs nothing measurable when idle.
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from xreflect.cli import run_stage
from xreflect.config import load_params
from xreflect.strategies import strategy_sources
from xreflect.data.split import Split
from xreflect.io import log_stderr, write_json, write_npz
from xreflect.pipeline import MODELS_DIR, embedding_path, split_paths
from xreflect.training.baselines import popularity
from xreflect.training.config import train_config
from xreflect.training.features import load_features
from xreflect.training.grid import train_grid
from xreflect.training.store import DirectoryStore, checkpoint_key, train_cache_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    strategy = parser.parse_args(argv).strategy
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for the fp32 matmuls
    params = load_params()
    sources = strategy_sources(params, strategy)
    config, overrides = train_config(params)
    full_k = max(int(k) for k in (params.get("evaluate") or {}).get("ks", [1, 10]))
    if overrides:
        log_stderr(f"train: dataset {params.get('dataset')!r} overrides {overrides} "
                   "(train.dataset_overrides in params.yaml; a key you change under train wins)")
    embedding_paths = [embedding_path(strategy, source) for source in sources]
    features = load_features(embedding_paths, config.normalize_sources) if sources else None
    out_dir = MODELS_DIR / strategy
    splits = split_paths(int(params["split"]["n_splits"]))
    selection, start = {}, time.perf_counter()
    for k, split_path in enumerate(splits):
        split = Split.load(split_path)
        label = f"{strategy} split {k + 1}/{len(splits)}: "
        if features is None:
            result = popularity(split, full_k=full_k)
        else:
            store = DirectoryStore(train_cache_root() / strategy /
                                   checkpoint_key(split_path, embedding_paths, config))
            result = train_grid(split, features, config, store, label=label, full_k=full_k)
        write_npz(out_dir / f"split_{k}.npz", test_scores=result.test_scores, valid_scores=result.valid_scores,
                  full_test_top=result.full_test_top)
        selection[f"split_{k}"] = result.selection()
        elapsed = time.perf_counter() - start
        log_stderr(f"train {label}done; {elapsed:.0f} s so far, about {elapsed / (k + 1) * (len(splits) - k - 1):.0f} s left")
    write_json(out_dir / "selection.json", {"strategy": strategy, "sources": sources, "splits": selection})


if __name__ == "__main__":
    run_stage(main)
