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
from xreflect.training.epochs import epoch_samples, is_eval_epoch, stack_samples, train_epoch_stacked
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
    train_split_points([split], features, config, [(0, p) for p in points],
                       lambda _, point, result, state: on_done(point, result, state), log, label)


def train_split_points(splits: list[Split], features: torch.Tensor, config: TrainConfig,
                       rows: list[tuple[int, GridPoint]],
                       on_done: Callable[[int, GridPoint, PointResult, State], None], log: Log = log_stderr,
                       label: str = "", split_labels: list[str] | None = None) -> None:
    """Train the (split number, grid point) `rows` together, of one split or of several stacked
    (placement.stack_splits; their epochs must have as many samples); call `on_done(split number,
    point, result, state)` for each as soon as it stops. Each row's random streams, batches and
    validation are those of its own split, as when its split trains alone."""
    device = features.device
    precision = resolve_precision(config.precision, device)[0]
    pools = [negative_pool(split) for split in splits]
    valids = [EvalSet.of(candidates(split, "valid"), device) for split in splits]
    inits = [init_state(split.n_users, features.shape[1], list(config.item_hidden), config.dim,
                        init_seed(config, split)) for split in splits]
    model = StackedTwoTower([inits[s] for s, _ in rows], features, [p.dropout for _, p in rows],
                            [dropout_seed(config, splits[s], p) for s, p in rows], DTYPES[precision],
                            row_split=None if len(splits) == 1 else [s for s, _ in rows])
    optimizer = StackedAdamW(model.params, [p.lr for _, p in rows], config.weight_decay)
    trackers = [Tracker(p) for _, p in rows]
    row_splits = [s for s, _ in rows]
    metric, ks = config.select_metric, metric_ks(config)
    names = None if len(splits) == 1 else [(split_labels or [f"split {k + 1}: " for k in range(len(splits))])[s]
                                           for s in row_splits]
    start = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        parts = [epoch_samples(split, pool, config, epoch, device) for split, pool in zip(splits, pools)]
        losses = train_epoch_stacked(model, optimizer, parts[0] if len(parts) == 1 else stack_samples(parts),
                                     config.batch_size)
        if not is_eval_epoch(epoch, config):
            continue
        if len(splits) == 1:
            scores = model.scores(valids[0].users, valids[0].items)
        else:
            scores = model.scores_each([(valids[s].users, valids[s].items) for s in row_splits])
        losses = losses.float().tolist()
        for row, tracker in enumerate(trackers):
            tracker.update(epoch, valids[row_splits[row]].metrics(scores[row], ks), metric,
                           lambda: model.state(row), losses[row])
        stopped = [r for r, t in enumerate(trackers) if t.stale >= config.patience or epoch == config.max_epochs]
        elapsed = time.perf_counter() - start
        for row in stopped:
            on_done(row_splits[row], trackers[row].point, trackers[row].result(epoch, elapsed, precision),
                    trackers[row].best_state)
        log(_progress(label, epoch, config, trackers, stopped, elapsed, metric, names))
        keep = [r for r in range(len(trackers)) if r not in stopped]
        if not keep:
            return
        if stopped:
            model.keep(keep)
            optimizer.keep(keep)
            trackers = [trackers[r] for r in keep]
            row_splits = [row_splits[r] for r in keep]
            names = None if names is None else [names[r] for r in keep]


def _progress(label: str, epoch: int, config: TrainConfig, trackers: list[Tracker], stopped: list[int],
              elapsed: float, metric: str, names: list[str] | None = None) -> str:
    per_epoch = elapsed / epoch
    # Upper bound: every point still training runs to max_epochs; early stopping usually cuts it.
    worst_left = per_epoch * (config.max_epochs - epoch) if len(stopped) < len(trackers) else 0.0
    points = "; ".join(f"{names[r] if names else ''}{t.point.name} {t.best:.4f}@{t.best_epoch}"
                       f"{' (stopped)' if r in stopped else ''}" for r, t in enumerate(trackers))
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
    feats = _device_features(features, split, device)
    grid = config.grid()
    done = _restore(grid, store, config, device, log, label)
    todo = [p for p in grid if p not in done]
    samples_per_epoch = len(split.train) * (1 + config.negatives_per_positive)
    size = max(1, stack_size or default_stack_size(device, len(todo), samples_per_epoch, config.batch_size))
    for start in range(0, len(todo), size):
        train_points(split, feats, config, todo[start:start + size], _saver(done, store), log, label)
    return _choose_and_test(split, feats, config, done, store, log, label, full_k)


def train_grids_stacked(splits: list[Split], features: np.ndarray, config: TrainConfig,
                        stores: list[PointStore | None] | None = None, device: torch.device | None = None,
                        log: Log = log_stderr, labels: list[str] | None = None,
                        full_k: int | None = None) -> list[StrategyResult]:
    """train_grid for several splits at once (placement.stack_splits): the grid points of every split
    that its store does not hold train in one stack (splits x points models per launch; splits
    whose epochs differ in size in stacks of their own), each on its own split's batches, random
    streams and validation, so each split's result is the one train_grid gives it, up to float
    reduction order. Then each split chooses on validation and scores its test once, as train_grid."""
    device = device or default_device()
    n = len(splits)
    stores = stores or [None] * n
    labels = labels or [f"split {k + 1}/{n}: " for k in range(n)]
    feats = _device_features(features, splits[0], device)
    grid = config.grid()
    done = [_restore(grid, stores[k], config, device, log, labels[k]) for k in range(n)]
    savers = [_saver(done[k], stores[k]) for k in range(n)]
    groups: dict[int, list[int]] = {}
    for k, split in enumerate(splits):
        if split.n_items != splits[0].n_items:
            raise ValueError(f"split {k + 1} has {split.n_items} items, split 1 has {splits[0].n_items}")
        groups.setdefault(len(split.train), []).append(k)
    for group in groups.values():
        rows = [(i, p) for i, k in enumerate(group) for p in grid if p not in done[k]]
        if rows:
            train_split_points([splits[k] for k in group], feats, config, rows,
                               lambda i, point, result, state, group=group: savers[group[i]](point, result, state),
                               log, f"{len(group)} splits stacked: ", [labels[k] for k in group])
    return [_choose_and_test(splits[k], feats, config, done[k], stores[k], log, labels[k], full_k) for k in range(n)]


def _device_features(features: np.ndarray, split: Split, device: torch.device) -> torch.Tensor:
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    if feats.shape[0] != split.n_items:
        raise ValueError(f"item features have {feats.shape[0]} rows but the split has {split.n_items} items")
    return feats


def _restore(grid: list[GridPoint], store: PointStore | None, config: TrainConfig, device: torch.device,
             log: Log, label: str) -> dict[GridPoint, tuple[PointResult, State | None]]:
    """The grid points the checkpoint store already holds (logged, with the precision if any is left)."""
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
    return done


def _saver(done: dict, store: PointStore | None) -> Callable[[GridPoint, PointResult, State], None]:
    def finish(point: GridPoint, result: PointResult, state: State) -> None:
        if store is not None:
            store.save(point, result, state)
        done[point] = (result, state)
    return finish


def _choose_and_test(split: Split, feats: torch.Tensor, config: TrainConfig, done: dict, store: PointStore | None,
                     log: Log, label: str, full_k: int | None) -> StrategyResult:
    grid = config.grid()
    chosen = grid[best_point([done[p][0] for p in grid], config)]
    if done[chosen][1] is None:  # its checkpoint was pruned under an earlier grid: retrain it alone
        train_points(split, feats, config, [chosen], _saver(done, store), log, label)
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
