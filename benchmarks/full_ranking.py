"""Cost of the full-ranking protocol at a dataset's scale (not a test: run it by hand).

    python -m benchmarks.full_ranking --scale ml1m      # 6,040 users x 3,706 items, X-REFLECT input
    python -m benchmarks.full_ranking --scale ml1m --no-epoch

Builds the synthetic problem of benchmarks/train_speed.py, then for one model of the paper's size
(item tower 512-256-128 over 1,152-d inputs: three 384-d sources, as X-REFLECT) times what the
train stage adds per split and strategy (the whole-catalog score matrix and each user's top-k test
items, xreflect/evaluation/full_ranking.py) and what the evaluate stage adds (metrics from those items), next
to one validation evaluation under the sampled protocol and one training epoch of one grid point.
Times are medians of --repeats runs; memory is the process's peak RSS growth on the CPU (or the
peak allocated GPU memory), measured around the full-ranking steps only.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.train_speed import SCALES, peak_memory_mb, sync, synthetic_problem
from xreflect.data.split import candidates
from xreflect.evaluation.full_ranking import full_metrics, full_top_items
from xreflect.training.model import StackedAdamW, StackedTwoTower, init_state, score_matrix
from xreflect.training.negatives import negative_pool
from xreflect.training.config import TrainConfig
from xreflect.training.epochs import epoch_samples, train_epoch_stacked
from xreflect.training.grid import EvalSet, default_device


def median_seconds(step, repeats: int, device: torch.device) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = step()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ml1m")
    parser.add_argument("--dim", type=int, default=1152, help="item-tower input width")
    parser.add_argument("--k", type=int, default=10, help="top items kept per user (max of evaluate.ks)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-epoch", action="store_true", help="skip timing one training epoch")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    config = TrainConfig()
    split, features = synthetic_problem(SCALES[args.scale], [args.dim])
    feats = torch.as_tensor(features[args.dim], device=device)
    state = init_state(split.n_users, args.dim, list(config.item_hidden), config.dim, seed=0)
    users = torch.arange(split.n_users, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; scale {args.scale}: {split.n_users} users x "
          f"{split.n_items} items, {len(split.train):,} train interactions; tower {list(config.item_hidden)} "
          f"over {args.dim}-d inputs; top {args.k}; median of {args.repeats}")

    score_matrix(state, feats, users)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_memory_mb(device)
    with torch.no_grad():
        t_scores, scores = median_seconds(lambda: score_matrix(state, feats, users), args.repeats, device)
        t_top, top = median_seconds(lambda: full_top_items(scores, split, "test", args.k), args.repeats, device)
    t_metrics, metrics = median_seconds(lambda: full_metrics(split, "test", top, [1, args.k]), args.repeats, device)
    peak = peak_memory_mb(device) - (0.0 if device.type == "cuda" else rss_before)
    matrix_mb = split.n_users * split.n_items * 4 / 2 ** 20

    valid = EvalSet.of(candidates(split, "valid"), device)
    with torch.no_grad():
        t_sampled, _ = median_seconds(lambda: valid.metrics(score_matrix(state, feats, users).gather(1, valid.items),
                                                            [1, 10]), args.repeats, device)
    print(f"  train stage, per split and strategy: score matrix {t_scores:.3f} s "
          f"({matrix_mb:.0f} MiB float32), top-{args.k} test items {t_top:.3f} s; stored: "
          f"{top.nbytes / 2 ** 20:.2f} MiB int32")
    print(f"  evaluate stage, per split and strategy: metrics from the top items {t_metrics:.3f} s "
          f"(recall@{args.k} {metrics[f'recall@{args.k}']:.4f} for an untrained model)")
    print(f"  peak memory growth around the full-ranking steps: {peak:.0f} MiB "
          f"({'GPU allocated' if device.type == 'cuda' else 'process RSS high-water mark'})")
    print(f"  for comparison, one sampled validation evaluation (done every eval_every epochs): {t_sampled:.3f} s")
    if not args.no_epoch:
        model = StackedTwoTower([state], feats, [0.1], [0])
        optimizer = StackedAdamW(model.params, [0.001], config.weight_decay)
        samples = epoch_samples(split, negative_pool(split), config, 1, device)
        t_epoch, _ = median_seconds(lambda: train_epoch_stacked(model, optimizer, samples, config.batch_size), 1, device)
        print(f"  for comparison, one training epoch of one grid point: {t_epoch:.1f} s "
              f"(a split trains 9 grid points for up to {config.max_epochs} epochs)")


if __name__ == "__main__":
    main()
