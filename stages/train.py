"""DVC stage `train@<strategy>`: grid-train the two-tower model for one strategy on every split.

Reads params: train, strategies.<strategy>, split.n_splits, split.eval_negatives, evaluate.ks. Reads
data/splits/split_<k>.npz and data/embeddings/<strategy>/<source>.npy for each source the strategy
lists (concatenated in that order; an empty list is Item Popularity, which trains nothing). Writes
models/<strategy>/split_<k>.npz (`test_scores` and `valid_scores` of the selected model, aligned
with candidates(split, part), and `full_test_top`, its top-max(evaluate.ks) test items under the
full-ranking protocol, xreflect/evaluation/full_ranking.py), models/<strategy>/selection.json and
plots/training/<strategy>.csv. Finished grid points are checkpointed outside the stage's outs,
under ${XREFLECT_CACHE_DIR:-.cache}/train/, so an interrupted run resumes where it stopped.
The library function is xreflect.training.run.train_strategy.
"""
from __future__ import annotations

import argparse
import os

# OpenMP threads that spin while waiting make torch up to 4x slower whenever anything else runs on
# the machine (measured on 2 shared cores); passive waiting costs nothing measurable when idle.
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from xreflect.core.cli import run_stage  # noqa: E402 (after the OpenMP setting)
from xreflect.core.config import load_params  # noqa: E402
from xreflect.training.run import train_strategy  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    train_strategy(load_params(), parser.parse_args(argv).strategy)


if __name__ == "__main__":
    run_stage(main)
