"""bf16 against fp32: validation Recall@10 after a fixed number of epochs, over several seeds.

    python -m benchmarks.precision_check --scale ml1m --dim 384 --epochs 10 --seeds 0 1 2

On the benchmark's synthetic problem (benchmarks/train_speed.py), every grid point of the paper's
grid (or the --lr/--dropout ones) trains for exactly --epochs epochs in each dtype, once per seed
(the seed sets initialisation, dropout and negatives). bf16 passes when the difference of the two
means is within the seed-to-seed spread (the larger of the two ranges over seeds). Not a test:
tests/training/test_precision.py runs the same check at small scale.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from xreflect.data.split import Split
from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.grid import default_device, train_points


def recall_after(split: Split, features: np.ndarray, config: TrainConfig, seeds: list[int], precision: str,
                 epochs: int, device: torch.device | None = None) -> list[float]:
    """Mean over the grid's points of validation Recall@10 after exactly `epochs` epochs, per seed
    (the grid points train stacked; one evaluation, at the last epoch)."""
    device = device or default_device()
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    out = []
    for seed in seeds:
        run = replace(config, seed=seed, precision=precision, max_epochs=epochs, eval_every=epochs,
                      select_metric="recall@10")
        recalls: dict[GridPoint, float] = {}
        train_points(split, feats, run, run.grid(), lambda p, r, s: recalls.__setitem__(p, r.valid_metrics["recall@10"]),
                     log=lambda _: None)
        out.append(float(np.mean(list(recalls.values()))))
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.train_speed import SCALES, synthetic_problem  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ml1m")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, nargs="+", default=None, help="default: the paper's grid")
    parser.add_argument("--dropout", type=float, nargs="+", default=None, help="default: the paper's grid")
    args = parser.parse_args(argv)
    config = TrainConfig()
    config = replace(config, lr=tuple(args.lr or config.lr), dropout=tuple(args.dropout or config.dropout))
    split, features = synthetic_problem(SCALES[args.scale], [args.dim])
    device = default_device()
    print(f"scale {args.scale}, {args.dim}-d, device {device}, {len(config.grid())} grid point(s), "
          f"{args.epochs} epochs, seeds {args.seeds}")
    results = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        results[precision] = recall_after(split, features[args.dim], config, args.seeds, precision, args.epochs, device)
        print(f"  {precision}: valid Recall@10 per seed {[round(r, 4) for r in results[precision]]}, mean "
              f"{np.mean(results[precision]):.4f}, range {np.ptp(results[precision]):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    difference = abs(np.mean(results["bf16"]) - np.mean(results["fp32"]))
    spread = max(np.ptp(results["fp32"]), np.ptp(results["bf16"]))
    print(f"  |mean bf16 - mean fp32| = {difference:.4f}, seed-to-seed spread {spread:.4f}: "
          f"{'PASS' if difference <= spread else 'FAIL'}")


if __name__ == "__main__":
    main()
