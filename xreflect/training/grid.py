"""Grid training of the two-tower model with early stopping, selection on validation, one test.

The paper's protocol: every (lr, dropout) grid point trains with AdamW, is evaluated on validation
every `eval_every` epochs and stops after `patience` evaluations without a better validation
`select_metric`; each keeps its best-validation checkpoint. The grid point with the best validation
metric is chosen, and only its best checkpoint then scores the test candidates, once. Test data are
never looked at before that.

Grid points train in a `StackedTwoTower` (see xreflect/training/model.py): all together on a GPU or for
small data, one at a time on the CPU for large data (see default_stack_size); in a stack each keeps
its own early stopping and leaves when it stops. A grid point's random streams (initialisation,
dropout, negatives, batch order) depend only on the seed, the split and the point itself
(xreflect/training/seeds.py), so training a point
alone or beside others, or resuming after an interruption, gives the same result (up to float
rounding of batched matmuls).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from xreflect.data.split import Candidates, Split, candidates
from xreflect.core.io import log_stderr
from xreflect.evaluation.metrics import torch_topk_metrics
from xreflect.evaluation.full_ranking import full_top_items
from xreflect.training.model import State, StackedAdamW, StackedTwoTower, init_state, score_matrix
from xreflect.training.negatives import negative_pool
from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.epochs import epoch_samples, is_eval_epoch, train_epoch_stacked
from xreflect.training.precision import DTYPES, resolve_precision
from xreflect.training.results import PointResult, StrategyResult
from xreflect.training.seeds import dropout_seed, init_seed
from xreflect.training.store import PointStore

Log = Callable[[str], None]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class EvalSet:
    """A part's candidates on the device."""
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, cands: Candidates, device: torch.device) -> "EvalSet":
        return cls(torch.arange(len(cands.items), device=device), torch.as_tensor(cands.items, device=device),
                   torch.as_tensor(cands.labels, device=device), torch.as_tensor(cands.mask, device=device))

    def metrics(self, scores: torch.Tensor, ks: list[int]) -> dict[str, float]:
        return torch_topk_metrics(scores, self.labels, self.mask, ks)


def metric_ks(config: TrainConfig) -> list[int]:
    return sorted({1, 10, config.select()[1]})


@dataclass
class Tracker:
    """Early-stopping bookkeeping of one grid point."""
    point: GridPoint
    best: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: State | None = None
    stale: int = 0  # evaluations since the last improvement
    curve: list[dict] = field(default_factory=list)

    def update(self, epoch: int, metrics: dict[str, float], metric: str, state: Callable[[], State],
               train_loss: float | None = None) -> None:
        self.curve.append({"epoch": epoch, f"valid_{metric}": round(metrics[metric], 6),
                           "train_loss": None if train_loss is None else round(train_loss, 6)})
        if metrics[metric] > self.best:
            self.best, self.best_epoch, self.best_metrics = metrics[metric], epoch, metrics
            self.best_state, self.stale = state(), 0
        else:
            self.stale += 1

    def result(self, epochs_run: int, seconds: float, precision: str = "fp32") -> PointResult:
        return PointResult(self.point.lr, self.point.dropout, self.best_epoch, epochs_run, round(seconds, 3),
                           self.best_metrics, precision, self.curve)


def train_points(split: Split, features: torch.Tensor, config: TrainConfig, points: list[GridPoint],
                 on_done: Callable[[GridPoint, PointResult, State], None], log: Log = log_stderr,
                 label: str = "") -> None:
    """Train `points` together; call `on_done` for each as soon as it stops (early or at max_epochs)."""
    device = features.device
    precision = resolve_precision(config.precision, device)[0]
    pool = negative_pool(split)
    valid = EvalSet.of(candidates(split, "valid"), device)
    init = init_state(split.n_users, features.shape[1], list(config.item_hidden), config.dim,
                      init_seed(config, split))
    model = StackedTwoTower([init] * len(points), features, [p.dropout for p in points],
                            [dropout_seed(config, split, p) for p in points], DTYPES[precision])
    optimizer = StackedAdamW(model.params, [p.lr for p in points], config.weight_decay)
    trackers = [Tracker(p) for p in points]
    metric, ks = config.select_metric, metric_ks(config)
    start = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        losses = train_epoch_stacked(model, optimizer, epoch_samples(split, pool, config, epoch, device),
                                     config.batch_size)
        if not is_eval_epoch(epoch, config):
            continue
        scores = model.scores(valid.users, valid.items)
        losses = losses.float().tolist()
        for row, tracker in enumerate(trackers):
            tracker.update(epoch, valid.metrics(scores[row], ks), metric, lambda: model.state(row), losses[row])
        stopped = [r for r, t in enumerate(trackers) if t.stale >= config.patience or epoch == config.max_epochs]
        elapsed = time.perf_counter() - start
        for row in stopped:
            on_done(trackers[row].point, trackers[row].result(epoch, elapsed, precision), trackers[row].best_state)
        log(_progress(label, epoch, config, trackers, stopped, elapsed, metric))
        keep = [r for r in range(len(trackers)) if r not in stopped]
        if not keep:
            return
        if stopped:
            model.keep(keep)
            optimizer.keep(keep)
            trackers = [trackers[r] for r in keep]


def _progress(label: str, epoch: int, config: TrainConfig, trackers: list[Tracker], stopped: list[int],
              elapsed: float, metric: str) -> str:
    per_epoch = elapsed / epoch
    # Upper bound: every point still training runs to max_epochs; early stopping usually cuts it.
    worst_left = per_epoch * (config.max_epochs - epoch) if len(stopped) < len(trackers) else 0.0
    points = "; ".join(f"{t.point.name} {t.best:.4f}@{t.best_epoch}{' (stopped)' if r in stopped else ''}"
                       for r, t in enumerate(trackers))
    return (f"train {label}epoch {epoch}/{config.max_epochs} | valid {metric} best: {points} | "
            f"{per_epoch:.2f} s/epoch, at most {worst_left:.0f} s left for this split")


def default_stack_size(device: torch.device, n_points: int, samples_per_epoch: int, batch_size: int) -> int:
    """How many grid points train together (measured with benchmarks/train_speed.py, 2 CPU cores):
    - GPU: all of them; one point's matmuls are too small to fill the device.
    - CPU, small epochs (the demo: 4 batches): all; stacking amortises per-operation overhead
      (a 9-point grid 25-35% faster than one point at a time).
    - CPU, large epochs (MovieLens-1M: 391 batches): one at a time; the work is matmul-bound and
      nine points' activations only add cache pressure (stacked was 20% slower per point), and an
      interruption then loses at most one grid point."""
    if device.type == "cuda" or samples_per_epoch <= 50 * batch_size:
        return n_points
    return 1


def train_grid(split: Split, features: np.ndarray, config: TrainConfig, store: PointStore | None = None,
               device: torch.device | None = None, log: Log = log_stderr, label: str = "",
               stack_size: int | None = None, full_k: int | None = None) -> StrategyResult:
    """Train the whole lr x dropout grid on one split, choose on validation, score test once (and,
    with `full_k`, keep the chosen model's top-`full_k` test items under the full-ranking protocol)."""
    device = device or default_device()
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    if feats.shape[0] != split.n_items:
        raise ValueError(f"item features have {feats.shape[0]} rows but the split has {split.n_items} items")
    grid = config.grid()
    done: dict[GridPoint, tuple[PointResult, State | None]] = {}
    for point in grid:
        loaded = store.load(point) if store is not None else None
        if loaded is not None:
            done[point] = loaded
    todo = [p for p in grid if p not in done]
    if done:
        log(f"train {label}{len(done)} grid point(s) restored from the checkpoint store, {len(todo)} to train")
    if todo:
        log(f"train {label}precision {'; '.join(resolve_precision(config.precision, device))}")

    def finish(point: GridPoint, result: PointResult, state: State) -> None:
        if store is not None:
            store.save(point, result, state)
        done[point] = (result, state)

    samples_per_epoch = len(split.train) * (1 + config.negatives_per_positive)
    size = max(1, stack_size or default_stack_size(device, len(todo), samples_per_epoch, config.batch_size))
    for start in range(0, len(todo), size):
        train_points(split, feats, config, todo[start:start + size], finish, log, label)
    chosen = grid[best_point([done[p][0] for p in grid], config)]
    if done[chosen][1] is None:  # its checkpoint was pruned under an earlier grid: retrain it alone
        train_points(split, feats, config, [chosen], finish, log, label)
    result = select_and_test(split, feats, config, [done[p] for p in grid], grid.index(chosen), full_k)
    if store is not None:
        store.prune(grid, keep=chosen)
    return result


def best_point(results: list[PointResult], config: TrainConfig) -> int:
    """Index of the best validation `select_metric` (the first in grid order on ties)."""
    return int(np.argmax([r.valid_metrics[config.select_metric] for r in results]))


def select_and_test(split: Split, features: torch.Tensor, config: TrainConfig,
                    trained: list[tuple[PointResult, State | None]], chosen: int | None = None,
                    full_k: int | None = None) -> StrategyResult:
    """Choose the grid point with the best validation metric (first in grid order on ties) unless
    `chosen` says which; only then score the test candidates, once, with its best checkpoint (and,
    with `full_k`, rank the whole catalog for the full-ranking protocol from the same scores)."""
    chosen = best_point([r for r, _ in trained], config) if chosen is None else chosen
    result, state = trained[chosen]
    assert state is not None, "the chosen grid point has no checkpoint"
    valid, test = candidates(split, "valid"), candidates(split, "test")
    device = features.device
    with torch.no_grad():
        scores = score_matrix(state, features, torch.arange(split.n_users, device=device))
        valid_scores = scores.gather(1, torch.as_tensor(valid.items, device=device))
        test_scores = scores.gather(1, torch.as_tensor(test.items, device=device))
        full_top = None if full_k is None else full_top_items(scores, split, "test", full_k)
    return StrategyResult([r for r, _ in trained], chosen, valid_scores.cpu().numpy().astype(np.float32),
                          test_scores.cpu().numpy().astype(np.float32), result.valid_metrics, full_top)
