"""Training speed benchmark: the stacked grid trainer against the plain per-sample reference.

    python -m benchmarks.train_speed --scale ml1m            # MovieLens-1M size, 384-d and 1,152-d
    python -m benchmarks.train_speed --scale amazon          # Amazon-Software size
    python -m benchmarks.train_speed --scale ml1m --quick    # time 12 batches each and extrapolate

Builds a synthetic problem of the given size (long-tail item popularity, clustered item features
that users' tastes follow), times one epoch of each implementation in the same process (so the
ratio holds on a noisy machine: they take turns batch by batch), times evaluation of every user's candidates, and projects the
wall time of the full lr x dropout grid x 5 splits for one strategy. Not a test: run it by hand.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as stages/train.py; before importing torch

import numpy as np
import torch


from xreflect.data.split import Split, candidates, make_split
from xreflect.model import StackedAdamW, StackedTwoTower, TwoTower, init_state
from xreflect.negatives import negative_pool
from xreflect.training.config import TrainConfig
from xreflect.training.epochs import (Samples, batches, epoch_samples, train_epoch_reference,
                                      train_epoch_stacked)
from xreflect.training.grid import EvalSet, default_device, default_stack_size, train_grid


@dataclass(frozen=True)
class Scale:
    n_users: int
    n_items: int
    n_interactions: int
    ratio: tuple[int, int, int]
    eval_negatives: int


SCALES = {
    "ml1m": Scale(6040, 3706, 1_000_209, (8, 1, 1), 1000),
    "amazon": Scale(1004, 1729, 6251, (6, 2, 2), 1000),
    "demo": Scale(400, 500, 15_000, (8, 1, 1), 100),
}


def synthetic_problem(scale: Scale, dims: list[int], seed: int = 0) -> tuple[Split, dict[int, np.ndarray]]:
    """Interactions with Zipf-like item popularity and long-tailed user activity (at least 5 each);
    users prefer one of 20 latent clusters, which the item features reveal through noise."""
    rng = np.random.default_rng(seed)
    n_clusters = 20
    item_cluster = rng.integers(0, n_clusters, scale.n_items)
    popularity = 1.0 / np.arange(1, scale.n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(scale.n_items)]
    activity = rng.lognormal(0.0, 1.0, scale.n_users)
    counts = np.maximum(5, np.round(activity / activity.sum() * scale.n_interactions)).astype(np.int64)
    counts = np.minimum(counts, scale.n_items - scale.eval_negatives - 10)
    # Hit the interaction count exactly: add or remove one interaction at random users with room.
    while (gap := scale.n_interactions - counts.sum()) != 0:
        room = counts < scale.n_items - scale.eval_negatives - 10 if gap > 0 else counts > 5
        chosen = rng.choice(np.flatnonzero(room), min(abs(gap), room.sum()), replace=False)
        counts[chosen] += np.sign(gap)
    user_cluster = rng.integers(0, n_clusters, scale.n_users)
    pairs = []
    for user in range(scale.n_users):
        weights = popularity * np.where(item_cluster == user_cluster[user], 8.0, 1.0)
        # Gumbel top-k: a weighted sample without replacement in one vectorised step.
        keys = np.log(weights) - np.log(-np.log(rng.random(scale.n_items)))
        items = np.argpartition(-keys, counts[user] - 1)[:counts[user]]
        pairs.append(np.column_stack([np.full(len(items), user), items]))
    pairs = np.concatenate(pairs)
    split = make_split(pairs, scale.n_users, scale.n_items, scale.ratio, scale.eval_negatives, seed)
    features = {}
    for d in dims:
        centres = rng.normal(size=(n_clusters, d))
        f = centres[item_cluster] + 1.5 * rng.normal(size=(scale.n_items, d))
        features[d] = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    return split, features


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch_slices(samples: Samples, batch_size: int) -> list[Samples]:
    return [Samples(samples.users[b], samples.items[b], samples.labels[b])
            for b in batches(len(samples), batch_size)]


def interleaved_epoch_seconds(steps: dict[str, Callable[[Samples], None]], samples: Samples, batch_size: int,
                              device: torch.device, max_batches: int | None) -> dict[str, float]:
    """Seconds per epoch of each implementation. The implementations take turns batch by batch
    (same batches, same order), so a change in machine load hits all of them alike; each epoch
    time is the median batch time x batches per epoch (an exact epoch when all batches run)."""
    parts = batch_slices(samples, batch_size)
    timed = parts if max_batches is None else parts[:max_batches]
    for step in steps.values():  # warm-up: allocator, kernels
        step(parts[0])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for part in timed:
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step(part)
            sync(device)
            times[name].append(time.perf_counter() - start)
    if max_batches is None:
        return {name: float(np.sum(t)) for name, t in times.items()}
    return {name: float(np.median(t)) * len(parts) for name, t in times.items()}


def bench_features(split: Split, features: np.ndarray, config: TrainConfig, device: torch.device,
                   max_batches: int | None, reference: bool) -> dict[str, float]:
    feats = torch.as_tensor(features, device=device)
    samples = epoch_samples(split, negative_pool(split), config, 1, device)
    grid = config.grid()
    init = init_state(split.n_users, feats.shape[1], list(config.item_hidden), config.dim, 0)
    stack = StackedTwoTower([init] * len(grid), feats, [p.dropout for p in grid], list(range(len(grid))))
    stack_opt = StackedAdamW(stack.params, [p.lr for p in grid], config.weight_decay)
    single = StackedTwoTower([init], feats, [grid[0].dropout], [0])
    single_opt = StackedAdamW(single.params, [grid[0].lr], config.weight_decay)
    steps: dict[str, Callable[[Samples], None]] = {
        "stack_epoch": lambda s: train_epoch_stacked(stack, stack_opt, s, config.batch_size),
        "single_epoch": lambda s: train_epoch_stacked(single, single_opt, s, config.batch_size),
    }
    if reference:
        model = TwoTower(init, feats, grid[0].dropout).to(device)
        ref_opt = torch.optim.AdamW(model.parameters(), lr=grid[0].lr, weight_decay=config.weight_decay)
        steps["reference_epoch"] = lambda s: train_epoch_reference(model, ref_opt, s, config.batch_size)
    out = interleaved_epoch_seconds(steps, samples, config.batch_size, device, max_batches)
    out["samples"] = len(samples)
    valid = EvalSet.of(candidates(split, "valid"), device)
    for name, model_ in (("eval_single", single), ("eval_stack", stack)):
        model_.scores(valid.users, valid.items)  # warm-up
        sync(device)
        start = time.perf_counter()
        scores = model_.scores(valid.users, valid.items)
        for row in range(model_.size):
            valid.metrics(scores[row], [1, 10])
        sync(device)
        out[name] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ml1m")
    parser.add_argument("--quick", action="store_true", help="time 12 batches per implementation and extrapolate (median)")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 1152])
    parser.add_argument("--no-reference", action="store_true", help="skip the per-sample reference")
    parser.add_argument("--early-stop", action="store_true",
                        help="train the full grid once (fast trainer) to measure epochs to early stop")
    parser.add_argument("--epochs", type=float, default=40.0,
                        help="epochs per grid point assumed for projections when --early-stop is not given")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    config = TrainConfig()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    scale = SCALES[args.scale]
    start = time.perf_counter()
    split, features = synthetic_problem(scale, args.dims)
    print(f"device: {name}; torch {torch.__version__}")
    print(f"scale {args.scale}: {split.n_users} users, {split.n_items} items, "
          f"{len(split.train) + len(split.valid) + len(split.test):,} interactions "
          f"({len(split.train):,} train), {split.valid_negatives.shape[1]} validation + as many test negatives; "
          f"built in {time.perf_counter() - start:.1f} s; tower {list(config.item_hidden)}, "
          f"batch {config.batch_size}, grid {len(config.grid())} points"
          + (" [quick: median of 12 interleaved batches x batches per epoch]" if args.quick else ""))
    for d, feats in features.items():
        r = bench_features(split, feats, config, device, 12 if args.quick else None, not args.no_reference)
        epochs, how = args.epochs, "assumed"
        if args.early_stop:
            fit = train_grid(split, feats, config, device=device, log=lambda m: None)
            epochs, how = float(np.mean([p.epochs_run for p in fit.points])), "measured"
        n_grid, n_splits, n_evals = len(config.grid()), 5, epochs / config.eval_every
        stacked = default_stack_size(device, n_grid, r['samples'], config.batch_size) > 1  # as train_grid
        per_point = r["stack_epoch"] / n_grid if stacked else r["single_epoch"]
        per_point_eval = r["eval_stack"] / n_grid if stacked else r["eval_single"]
        fast_total = n_splits * n_grid * (per_point * epochs + per_point_eval * n_evals)
        print(f"\n[{d}-d features]")
        print(f"  fast, 9-point stack : {r['stack_epoch']:.2f} s/epoch = {r['stack_epoch'] / n_grid:.2f} s per grid point, "
              f"{r['samples'] * n_grid / r['stack_epoch']:,.0f} samples/s")
        print(f"  fast, single point  : {r['single_epoch']:.2f} s/epoch, {r['samples'] / r['single_epoch']:,.0f} samples/s")
        print(f"  evaluation, all users (positives + {split.valid_negatives.shape[1]} negatives): "
              f"{r['eval_single']:.3f} s per model, {r['eval_stack']:.3f} s for the 9-point stack")
        print(f"  epochs per grid point ({how}): {epochs:.1f}")
        print(f"  projected grid x {n_splits} splits, one strategy: {fast_total / 3600:.2f} h "
              f"(grid points {'stacked' if stacked else 'one at a time'}, as train_grid does on {device.type})")
        if "reference_epoch" in r:
            ref_total = n_splits * n_grid * (r["reference_epoch"] * epochs + r["eval_single"] * n_evals)
            print(f"  reference per-sample: {r['reference_epoch']:.2f} s/epoch, "
                  f"{r['samples'] / r['reference_epoch']:,.0f} samples/s; projected {ref_total / 3600:.2f} h")
            print(f"  speed-up per grid-point epoch: {r['reference_epoch'] / r['single_epoch']:.1f}x one point at a "
                  f"time, {r['reference_epoch'] * n_grid / r['stack_epoch']:.1f}x stacked")
        print(f"  peak memory so far: {peak_memory_mb(device):,.0f} MiB")


if __name__ == "__main__":
    main()
