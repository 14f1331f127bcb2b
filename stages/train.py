"""DVC stage `train@<strategy>`: grid-train the two-tower model for one strategy on every split.

Reads params: train, strategies.<strategy>, split.n_splits. Reads data/splits/split_<k>.npz and
data/embeddings/<source>.npy for each source the strategy lists (concatenated in that order; an
empty list is Item Popularity, which trains nothing). Writes models/<strategy>/split_<k>.npz
(`test_scores` and `valid_scores` of the selected model, aligned with candidates(split, part)) and
models/<strategy>/selection.json. Finished grid points are checkpointed outside the stage's outs,
under ${XREFLECT_CACHE_DIR:-.cache}/train/, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting make torch up to 4x slower whenever anything else runs on
# the machine (measured on 2 shared cores); passive waiting costs nothing measurable when idle.
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xreflect.config import load_params, strategy_sources, train_section  # noqa: E402
from xreflect.data.split import Split  # noqa: E402
from xreflect.pipeline import check_declared_deps, embedding_path  # noqa: E402
from xreflect.io import write_json, write_npz  # noqa: E402
from xreflect.train import (DirectoryStore, TrainConfig, checkpoint_key, load_features, log_stderr,  # noqa: E402
                            popularity, train_cache_root, train_grid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for the fp32 matmuls
    params = load_params()
    sources = strategy_sources(params, args.strategy)
    check_declared_deps(f"train_{args.strategy}", [embedding_path(source) for source in sources])
    section, overrides = train_section(params)
    if overrides:
        log_stderr(f"train: dataset {params.get('dataset')!r} overrides {overrides} "
                   f"(train.dataset_overrides in params.yaml)")
    config = TrainConfig.from_params(section)
    n_splits = int(params["split"]["n_splits"])
    embedding_paths = [embedding_path(source) for source in sources]
    features = load_features(embedding_paths) if sources else None
    out_dir = Path("models") / args.strategy
    selection, start = {}, time.perf_counter()
    for k in range(n_splits):
        split_path = Path("data/splits") / f"split_{k}.npz"
        split = Split.load(split_path)
        label = f"{args.strategy} split {k + 1}/{n_splits}: "
        if features is None:
            result = popularity(split)
        else:
            store = DirectoryStore(train_cache_root() / args.strategy /
                                   checkpoint_key(split_path, embedding_paths, config))
            result = train_grid(split, features, config, store, label=label)
        write_npz(out_dir / f"split_{k}.npz", test_scores=result.test_scores, valid_scores=result.valid_scores)
        selection[f"split_{k}"] = result.selection()
        elapsed = time.perf_counter() - start
        log_stderr(f"train {label}done; {elapsed:.0f} s so far, about {elapsed / (k + 1) * (n_splits - k - 1):.0f} s left")
    write_json(out_dir / "selection.json", {"strategy": args.strategy, "sources": sources, "splits": selection})


if __name__ == "__main__":
    main()
