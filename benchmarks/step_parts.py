"""Where a bf16 training batch's time goes: the step timed whole and with one part left out at a time.

    python -m benchmarks.step_parts                      # MovieLens-1M size, 384-d, one grid point
    python -m benchmarks.step_parts --dim 1152 --points 9

Each variant trains its own model on the same batches (a synthetic problem from
benchmarks/train_speed.py); the variants take turns in runs of `--batches` batches, `--rounds`
times, and the first round is a warm-up. Leaving a part out gives what it costs inside a real step,
with the caches as the rest of the step leaves them (a part timed alone is often several times
faster). Not a test: run it by hand.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

from xreflect.core.memory import keep_freed_memory

keep_freed_memory()  # as every stage does (xreflect.core.cli.run_stage)

import numpy as np
import torch

from benchmarks.train_speed import SCALES, bare_tower_step, batch_slices, synthetic_problem
from xreflect.training.config import TrainConfig
from xreflect.training.epochs import Samples, epoch_samples
from xreflect.training.model import (BF16_ROW_STEP, StackedAdamW, StackedTwoTower, distinct_items, init_state,
                                     layer_sizes, pad_rows, point_losses)
from xreflect.training.negatives import negative_pool


class BareRelu(StackedTwoTower):
    """The model with its hidden layers' bias and dropout left out: a bare ReLU, as the roofline's
    (the backward still sums the bias's gradient)."""

    def _bias_relu_drop(self, pre, bias, used):
        return torch.relu(pre)


def variants(model: Callable[[type], tuple[StackedTwoTower, StackedAdamW]],
             n_items: int) -> dict[str, Callable[[Samples], None]]:
    def step(cls: type, tower_only: bool, optimizer: bool) -> Callable[[Samples], None]:
        net, opt = model(cls)

        def run(part: Samples) -> None:
            if tower_only:  # the item tower on the batch's distinct items, no user side or loss
                distinct, _ = distinct_items(part.items, n_items)
                net.item_vectors(pad_rows(distinct, BF16_ROW_STEP), training=True).sum().backward()
                if optimizer:  # AdamW updates the whole user table, with or without a gradient
                    net.params["user"].grad = torch.zeros_like(net.params["user"])
            else:
                point_losses(net.logits(part.users, part.items), part.labels).sum().backward()
            if optimizer:
                opt.step(net.params)
            else:
                for p in net.params.values():
                    p.grad = None
        return run

    return {"whole step": step(StackedTwoTower, False, True),
            "hidden layers: bare ReLU": step(BareRelu, False, True),
            "without the optimizer": step(StackedTwoTower, False, False),
            "tower and optimizer": step(StackedTwoTower, True, True),
            "tower": step(StackedTwoTower, True, False),
            "tower with bare ReLUs": step(BareRelu, True, False)}


def time_in_turns(steps: dict[str, Callable[[Samples], None]], parts: list[Samples],
                  rounds: int) -> dict[str, float]:
    """Median seconds per batch of each step, the steps taking turns in runs of len(parts) batches."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for part in parts:
                step(part)
            if round_:  # the first round warms up
                times[name].append((time.perf_counter() - start) / len(parts))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ml1m")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--points", type=int, default=1, help="grid points trained stacked (9: the whole grid)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    split, features = synthetic_problem(SCALES[args.scale], [args.dim])
    config = TrainConfig()
    feats = torch.as_tensor(features[args.dim])
    samples = epoch_samples(split, negative_pool(split), config, 1, torch.device("cpu"))
    grid = config.grid()[:args.points]
    init = init_state(split.n_users, args.dim, list(config.item_hidden), config.dim, 0)

    def model(cls: type) -> tuple[StackedTwoTower, StackedAdamW]:
        net = cls([init] * len(grid), feats, [p.dropout for p in grid], list(range(len(grid))), torch.bfloat16)
        return net, StackedAdamW(net.params, [p.lr for p in grid], config.weight_decay)

    steps = variants(model, feats.shape[0])
    sizes = layer_sizes(args.dim, list(config.item_hidden), config.dim)
    steps["roofline (bare tower, train_speed)"] = bare_tower_step(feats, sizes, len(grid), torch.bfloat16)
    parts = batch_slices(samples, config.batch_size)[:args.batches]
    ms = {name: seconds * 1e3 for name, seconds in time_in_turns(steps, parts, args.rounds).items()}
    print(f"bf16, {args.scale} scale, {args.dim}-d, {len(grid)} grid point(s), {torch.get_num_threads()} threads; "
          f"ms per batch, median of {args.rounds - 1} runs of {len(parts)} batches:")
    for name, value in ms.items():
        print(f"  {name:36s} {value:7.2f}")
    whole, roof = ms["whole step"], ms["roofline (bare tower, train_speed)"]
    print("what each part costs inside the step (ms per batch):")
    for name, value in (("hidden layers' bias and dropout", whole - ms["hidden layers: bare ReLU"]),
                        ("optimizer (AdamW)", whole - ms["without the optimizer"]),
                        ("user side and loss", whole - ms["tower and optimizer"]),
                        ("tower beyond the roofline (casts, scale, last bias)",
                         ms["tower with bare ReLUs"] - roof)):
        print(f"  {name:52s} {value:6.2f}")
    print(f"whole step / roofline: {whole / roof:.2f}x")


if __name__ == "__main__":
    main()
