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

# OpenMP's own wait policy (a thread spins briefly for the next operation, then sleeps) is left as
# it is: a training step is ~100 short operations, and waking sleeping threads for each made a bf16
# step 1.5x slower on an idle machine (OMP_WAIT_POLICY=PASSIVE: 17.0 ms against 11.6 ms, ML-1M
# size, 2 AMD EPYC cores). On a machine shared with other busy work PASSIVE was 1.2-1.7x faster;
# set OMP_WAIT_POLICY=PASSIVE in the environment there (README, "Precision: bf16 where the
# hardware has it").
from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.training.run import train_strategy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    train_strategy(load_params(), parser.parse_args(argv).strategy)


if __name__ == "__main__":
    run_stage(main)
