"""Training speed benchmark: the stacked grid trainer against the plain per-sample reference.

    python -m benchmarks.train_speed --scale ml1m            # MovieLens-1M size, 384-d and 1,152-d
    python -m benchmarks.train_speed --scale amazon          # Amazon-Software size
    python -m benchmarks.train_speed --scale ml1m --quick    # time 12 batches each and extrapolate
    python -m benchmarks.train_speed --precisions fp32 bf16  # both dtypes (default: what auto allows)
    python -m benchmarks.train_speed --scale demo --threads 1 --pair-dots  # sample scores (un)blocked
    python -m benchmarks.train_speed --precisions bf16 --dims 384 --no-reference --whole-epochs 3  # whole epochs

Builds a synthetic problem of the given size (long-tail item popularity, clustered item features
that users' tastes follow), times one epoch of each implementation in the same process (so the
ratio holds on a noisy machine: they take turns batch by batch), in each precision it is asked for,
beside the roofline (the tower as a bare MLP, forward and backward, in the same dtype and process),
times evaluation of every user's candidates, and projects the wall time of the full lr x dropout
grid x 5 splits for one strategy and for Table 2. Not a test: run it by hand.
"""
from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

from xreflect.core.memory import keep_freed_memory

keep_freed_memory()  # as every stage does (xreflect.core.cli.run_stage)

import numpy as np
import torch


from xreflect.data.split import Split, candidates, make_split
from xreflect.training.model import (BF16_ROW_STEP, StackedAdamW, StackedTwoTower, TwoTower, distinct_items,
                                     feature_rows, init_state, layer_sizes, pad_rows)
from xreflect.training.negatives import negative_pool
from xreflect.training.config import TrainConfig
from xreflect.training.epochs import (Samples, batches, epoch_samples, train_epoch_reference,
                                      train_epoch_stacked)
from xreflect.training.grid import EvalSet, default_device, default_stack_size, train_grid
from xreflect.training.precision import DTYPES, cpu_native_bf16, resolve_precision


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
    # Warm-up: allocator, kernels, and (in a short run) the shapes of every timed batch, whose
    # kernels a full epoch would compile once and reuse from then on.
    for part in (parts[:1] if max_batches is None else timed):
        for step in steps.values():
            step(part)
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


def whole_epoch_seconds(steps: dict[str, Callable[[Samples], None]], samples: Samples, batch_size: int,
                        device: torch.device, rounds: int) -> dict[str, float]:
    """Seconds per epoch of each implementation, each running whole epochs in turn, `rounds` times
    (median). Every batch follows a batch of its own implementation, as in training, so its data is
    as warm in the caches as in a real epoch; interleaved batch by batch, every batch starts with
    another implementation's data in the caches, which slowed the bare-tower roofline more than the
    epoch (bf16 single point at MovieLens-1M size, 384-d: 1.50-1.61x interleaved, 1.63x here)."""
    parts = batch_slices(samples, batch_size)
    for step in steps.values():  # warm-up: allocator, kernels
        step(parts[0])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for part in parts:
                step(part)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def bare_tower_step(features: torch.Tensor, sizes: list[int], n_points: int,
                    dtype: torch.dtype) -> Callable[[Samples], None]:
    """The roofline: the item tower as a bare MLP (matmuls and ReLUs, no bias, dropout, user side,
    loss or optimizer), forward and backward, on the batch's distinct items, in `dtype`; n_points
    towers batched as the stacked trainer batches them. What the epoch cannot beat on this machine."""
    feats = features.to(dtype)
    shape = (lambda a, b: (n_points, a, b)) if n_points > 1 else (lambda a, b: (a, b))
    weights = [(torch.randn(*shape(a, b), device=features.device) * (2 / a) ** 0.5).to(dtype).requires_grad_(True)
               for a, b in zip(sizes[:-1], sizes[1:])]

    def step(part: Samples) -> None:
        distinct, _ = distinct_items(part.items, feats.shape[0])
        # as StackedTwoTower
        h = feature_rows(feats, pad_rows(distinct, 1 if dtype == torch.float32 else BF16_ROW_STEP))
        for layer, w in enumerate(weights):
            h = torch.matmul(torch.relu(h) if layer else h, w)
        h.sum().backward()
        for w in weights:
            w.grad = None
    return step


def tower_flops(n_items: float, sizes: list[int]) -> float:
    """Forward (2 M in out per layer) and backward (weights' gradient everywhere, inputs' gradient
    in every layer but the first: the features are frozen)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    return sum(2 * n_items * a * b * (3 if i else 2) for i, (a, b) in enumerate(layers))


def bench_features(split: Split, features: np.ndarray, config: TrainConfig, device: torch.device,
                   max_batches: int | None, reference: bool, precisions: list[str],
                   before: bool = False, pair_dots: bool = False, whole_rounds: int = 0) -> dict[str, float]:
    """Epoch seconds of the 9-point stack, one point, the roofline of each (per precision) and the
    per-sample reference (fp32), all timed batch by batch in turn (or whole epochs in turn, with
    whole_rounds); evaluation seconds (fp32)."""
    feats = torch.as_tensor(features, device=device)
    samples = epoch_samples(split, negative_pool(split), config, 1, device)
    grid = config.grid()
    init = init_state(split.n_users, feats.shape[1], list(config.item_hidden), config.dim, 0)
    sizes = layer_sizes(feats.shape[1], list(config.item_hidden), config.dim)
    steps: dict[str, Callable[[Samples], None]] = {}
    models = {}
    for precision in precisions:
        dtype = DTYPES[precision]
        stack = StackedTwoTower([init] * len(grid), feats, [p.dropout for p in grid], list(range(len(grid))), dtype)
        stack_opt = StackedAdamW(stack.params, [p.lr for p in grid], config.weight_decay)
        single = StackedTwoTower([init], feats, [grid[0].dropout], [0], dtype)
        single_opt = StackedAdamW(single.params, [grid[0].lr], config.weight_decay)
        models[precision] = (single, stack)
        steps[f"stack_epoch_{precision}"] = partial(train_epoch_stacked, stack, stack_opt, batch_size=config.batch_size)
        steps[f"single_epoch_{precision}"] = partial(train_epoch_stacked, single, single_opt,
                                                     batch_size=config.batch_size)
        steps[f"roofline_stack_{precision}"] = bare_tower_step(feats, sizes, len(grid), dtype)
        steps[f"roofline_single_{precision}"] = bare_tower_step(feats, sizes, 1, dtype)
    for blocked in (True, False) if pair_dots else ():  # the sample scores forced (un)blocked, each precision
        for precision in precisions:
            for name, n_points in (("stack", len(grid)), ("single", 1)):
                model = StackedTwoTower([init] * n_points, feats, [p.dropout for p in grid[:n_points]],
                                        list(range(n_points)), DTYPES[precision])
                model.blocked_pair_dots = blocked
                opt = StackedAdamW(model.params, [p.lr for p in grid[:n_points]], config.weight_decay)
                steps[f"{'blocked' if blocked else 'unblocked'}_{name}_epoch_{precision}"] = partial(
                    train_epoch_stacked, model, opt, batch_size=config.batch_size)
    if before:  # the trainer before train.precision and the fused optimizer: fp32, plain-op AdamW
        old = StackedTwoTower([init], feats, [grid[0].dropout], [0])
        old_opt = StackedAdamW(old.params, [grid[0].lr], config.weight_decay, fused=False)
        steps["before_single_epoch"] = partial(train_epoch_stacked, old, old_opt, batch_size=config.batch_size)
    if reference:
        model = TwoTower(init, feats, grid[0].dropout).to(device)
        ref_opt = torch.optim.AdamW(model.parameters(), lr=grid[0].lr, weight_decay=config.weight_decay)
        steps["reference_epoch"] = lambda s: train_epoch_reference(model, ref_opt, s, config.batch_size)
    out = (whole_epoch_seconds(steps, samples, config.batch_size, device, whole_rounds) if whole_rounds
           else interleaved_epoch_seconds(steps, samples, config.batch_size, device, max_batches))
    out["samples"] = len(samples)
    out["distinct_items"] = float(np.mean([len(torch.unique(samples.items[b])) for b in batches(len(samples), config.batch_size)]))
    out["batches"] = len(batches(len(samples), config.batch_size))
    valid = EvalSet.of(candidates(split, "valid"), device)
    single, stack = models[precisions[0]]
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
    parser.add_argument("--whole-epochs", type=int, default=0, metavar="ROUNDS",
                        help="time whole epochs, each implementation in turn, ROUNDS times (median), instead of "
                             "batch by batch in turn (closer to a real epoch's cache state; slower)")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 1152])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="dtypes to time (default: fp32, plus bf16 where train.precision auto picks it)")
    parser.add_argument("--no-reference", action="store_true", help="skip the per-sample reference")
    parser.add_argument("--before", action="store_true",
                        help="also time one point as trained before train.precision (fp32, plain-op AdamW)")
    parser.add_argument("--pair-dots", action="store_true",
                        help="also time the stack and one point with the sample scores blocked and unblocked "
                             "(model.pair_dots; by default blocked only on one thread)")
    parser.add_argument("--early-stop", action="store_true",
                        help="train the full grid once (fast trainer) to measure epochs to early stop")
    parser.add_argument("--epochs", type=float, default=40.0,
                        help="epochs per grid point assumed for projections when --early-stop is not given")
    parser.add_argument("--strategies", type=int, default=12,
                        help="trained strategies of Table 2 for its projection (Item Popularity trains nothing)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as stages/train.py
    config = TrainConfig()
    auto, why = resolve_precision("auto", device)
    precisions = args.precisions or (["fp32", "bf16"] if auto == "bf16" else ["fp32"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    scale = SCALES[args.scale]
    start = time.perf_counter()
    split, features = synthetic_problem(scale, args.dims)
    print(f"device: {name}; torch {torch.__version__}")
    if device.type == "cpu":
        print(f"cpu: {cpu_model()}; bf16 flags: {', '.join(cpu_native_bf16()) or 'none'}")
    print(f"precision auto chose: {auto} ({why}); timing {', '.join(precisions)}")
    print(f"scale {args.scale}: {split.n_users} users, {split.n_items} items, "
          f"{len(split.train) + len(split.valid) + len(split.test):,} interactions "
          f"({len(split.train):,} train), {split.valid_negatives.shape[1]} validation + as many test negatives; "
          f"built in {time.perf_counter() - start:.1f} s; tower {list(config.item_hidden)}, "
          f"batch {config.batch_size}, grid {len(config.grid())} points"
          + (f" [whole epochs in turn, median of {args.whole_epochs}]" if args.whole_epochs else
             " [quick: median of 12 interleaved batches x batches per epoch]" if args.quick else ""))
    for d, feats in features.items():
        r = bench_features(split, feats, config, device, 12 if args.quick else None, not args.no_reference, precisions,
                           args.before, args.pair_dots, args.whole_epochs)
        epochs, how = args.epochs, "assumed"
        if args.early_stop:
            fit = train_grid(split, feats, replace(config, precision=precisions[-1]), device=device, log=lambda m: None)
            epochs, how = float(np.mean([p.epochs_run for p in fit.points])), f"measured, {precisions[-1]}"
        n_grid, n_splits, n_evals = len(config.grid()), 5, epochs / config.eval_every
        stacked = default_stack_size(device, n_grid, r['samples'], config.batch_size) > 1  # as train_grid
        per_point_eval = r["eval_stack"] / n_grid if stacked else r["eval_single"]
        sizes = layer_sizes(d, list(config.item_hidden), config.dim)
        flops = tower_flops(r["distinct_items"], sizes) * r["batches"]  # one point, one epoch
        print(f"\n[{d}-d features] {r['batches']} batches/epoch, {r['distinct_items']:,.0f} distinct items per batch "
              f"on average; tower {sizes}: {flops / 1e9:,.0f} GFLOP per grid-point epoch")
        for precision in precisions:
            stack, single = r[f"stack_epoch_{precision}"], r[f"single_epoch_{precision}"]
            roof_stack, roof_single = r[f"roofline_stack_{precision}"], r[f"roofline_single_{precision}"]
            print(f"  {precision}, 9-point stack : {stack:.2f} s/epoch = {stack / n_grid:.2f} s per grid point, "
                  f"{r['samples'] * n_grid / stack:,.0f} samples/s")
            print(f"  {precision}, single point  : {single:.2f} s/epoch, {r['samples'] / single:,.0f} samples/s")
            print(f"  {precision}, roofline (bare tower MLP fwd+bwd, same process): stack {roof_stack:.2f} s/epoch "
                  f"({flops * n_grid / roof_stack / 1e9:,.0f} GFLOP/s), single {roof_single:.2f} s/epoch "
                  f"({flops / roof_single / 1e9:,.0f} GFLOP/s)")
            print(f"  {precision}, epoch / roofline: stack {stack / roof_stack:.2f}x, single {single / roof_single:.2f}x")
            per_point = stack / n_grid if stacked else single
            total = n_splits * n_grid * (per_point * epochs + per_point_eval * n_evals)
            print(f"  {precision}, projected full protocol (9 grid points x {n_splits} splits, {epochs:.0f} epochs each), "
                  f"one strategy: {total / 3600:.2f} h; Table 2 ({args.strategies} trained strategies at this "
                  f"width): {total * args.strategies / 3600:.1f} h (grid points "
                  f"{'stacked' if stacked else 'one at a time'}, as train_grid does on {device.type})")
        for precision in precisions if args.pair_dots else []:
            ratios = {name: r[f"unblocked_{name}_epoch_{precision}"] / r[f"blocked_{name}_epoch_{precision}"]
                      for name in ("stack", "single")}
            print(f"  {precision}, sample scores unblocked / blocked: stack {ratios['stack']:.2f}x "
                  f"({r[f'unblocked_stack_epoch_{precision}']:.2f} / {r[f'blocked_stack_epoch_{precision}']:.2f} s), "
                  f"single {ratios['single']:.2f}x")
        if "before_single_epoch" in r:
            after = r[f"single_epoch_{auto}"] if f"single_epoch_{auto}" in r else r[f"single_epoch_{precisions[-1]}"]
            print(f"  before (fp32, plain-op AdamW), single point: {r['before_single_epoch']:.2f} s/epoch; "
                  f"now ({auto if f'single_epoch_{auto}' in r else precisions[-1]}): {after:.2f} s/epoch, "
                  f"{r['before_single_epoch'] / after:.2f}x faster")
        if len(precisions) == 2:
            print(f"  bf16 speed-up over fp32: stack {r['stack_epoch_fp32'] / r['stack_epoch_bf16']:.2f}x, "
                  f"single {r['single_epoch_fp32'] / r['single_epoch_bf16']:.2f}x, roofline "
                  f"{r['roofline_single_fp32'] / r['roofline_single_bf16']:.2f}x")
        print(f"  evaluation (fp32), all users (positives + {split.valid_negatives.shape[1]} negatives): "
              f"{r['eval_single']:.3f} s per model, {r['eval_stack']:.3f} s for the 9-point stack")
        print(f"  epochs per grid point ({how}): {epochs:.1f}")
        if "reference_epoch" in r:
            ref_total = n_splits * n_grid * (r["reference_epoch"] * epochs + r["eval_single"] * n_evals)
            print(f"  reference per-sample (fp32): {r['reference_epoch']:.2f} s/epoch, "
                  f"{r['samples'] / r['reference_epoch']:,.0f} samples/s; projected {ref_total / 3600:.2f} h")
        print(f"  peak memory so far: {peak_memory_mb(device):,.0f} MiB")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
