"""Grid training of the two-tower model with early stopping, selection on validation, one test.

The paper's protocol: every (lr, dropout) grid point trains with AdamW, is evaluated on validation
every `eval_every` epochs and stops after `patience` evaluations without a better validation
`select_metric`; each keeps its best-validation checkpoint. The grid point with the best validation
metric is chosen, and only its best checkpoint then scores the test candidates, once. Test data are
never looked at before that.

Grid points train in a `StackedTwoTower` (see xreflect/model.py): all together on a GPU or for
small data, one at a time on the CPU for large data (see default_stack_size); in a stack each keeps its own early stopping and leaves
when it stops. A grid point's random streams (initialisation, dropout, negatives, batch order)
depend only on the seed and the point itself, so training a point alone or beside others, or
resuming after an interruption, gives the same result (up to float rounding of batched matmuls).

`train_reference` is the plain per-sample implementation of the same model and loop, kept for the
benchmark and for the equivalence test.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from xreflect.data.split import Candidates, Split, candidates
from xreflect.io import write_npz
from xreflect.metrics import topk_metrics
from xreflect.model import (State, StackedAdamW, StackedTwoTower, TwoTower, init_state, score_state,
                            seed_for, stacked_loss)
from xreflect.negatives import NegativePool, negative_pool, sample_negatives

Log = Callable[[str], None]
METRIC_NAMES = ("precision", "recall", "ndcg")


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TrainConfig:
    """The params.yaml `train` section."""
    dim: int = 128
    item_hidden: tuple[int, ...] = (512, 256)
    lr: tuple[float, ...] = (0.0001, 0.0005, 0.001)
    dropout: tuple[float, ...] = (0.1, 0.3, 0.5)
    weight_decay: float = 0.0005
    batch_size: int = 4096
    negatives_per_positive: int = 1
    max_epochs: int = 100
    eval_every: int = 5
    patience: int = 5
    select_metric: str = "recall@10"
    seed: int = 0

    @classmethod
    def from_params(cls, section: dict | None) -> "TrainConfig":
        section = dict(section or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(allowed))
        if unknown:
            raise ValueError(f"params.yaml: train.{unknown[0]} is not a training parameter; "
                             f"allowed keys: {', '.join(allowed)}")
        values = {}
        for name, value in section.items():
            if name == "lr":
                values[name] = _number_list("lr", value, "learning rate", "[0.001]", lambda x: x > 0)
            elif name == "dropout":
                values[name] = _number_list("dropout", value, "dropout rate", "[0.1]", lambda x: 0 <= x < 1)
            elif name == "item_hidden":
                if not isinstance(value, list) or not all(_is_int(v) and v > 0 for v in value):
                    raise ValueError(f"params.yaml: train.item_hidden must be a list of positive layer sizes "
                                     f"(e.g. [512, 256], or [] for a linear item tower), got {value!r}")
                values[name] = tuple(int(v) for v in value)
            elif name == "select_metric":
                values[name] = _metric_name(value)
            elif name == "weight_decay":
                if not _is_number(value) or value < 0:
                    raise ValueError(f"params.yaml: train.weight_decay must be a number >= 0, got {value!r}")
                values[name] = float(value)
            else:
                if not _is_int(value) or value < (0 if name == "seed" else 1):
                    raise ValueError(f"params.yaml: train.{name} must be a positive integer, got {value!r}")
                values[name] = int(value)
        return cls(**values)

    def grid(self) -> list["GridPoint"]:
        return [GridPoint(lr, dropout) for lr in self.lr for dropout in self.dropout]

    def point_params(self) -> dict:
        """Everything that shapes one grid point's training, except the grid lists themselves (so a
        cached point stays valid when other points are added to or removed from the grid)."""
        params = asdict(self)
        del params["lr"], params["dropout"]
        return params

    def select(self) -> tuple[str, int]:
        name, k = self.select_metric.split("@")
        return name, int(k)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_list(key: str, value: object, what: str, example: str, valid: Callable[[float], bool]) -> tuple[float, ...]:
    if value is None or value == []:
        raise ValueError(f"params.yaml: train.{key} is empty; give at least one {what}, e.g. {example}")
    values = value if isinstance(value, list) else [value]
    bad = [v for v in values if not _is_number(v) or not valid(v)]
    if bad:
        raise ValueError(f"params.yaml: train.{key} holds {bad[0]!r}, which is not a valid {what}; "
                         f"give a list of numbers, e.g. {example}")
    return tuple(float(v) for v in values)


def _metric_name(value: object) -> str:
    name, _, k = str(value).partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise ValueError(f"params.yaml: train.select_metric is {value!r}; use <metric>@<k> with metric one of "
                         f"{', '.join(METRIC_NAMES)}, e.g. recall@10")
    return f"{name}@{int(k)}"


@dataclass(frozen=True)
class GridPoint:
    lr: float
    dropout: float

    @property
    def name(self) -> str:
        return f"lr={self.lr:g}_dropout={self.dropout:g}"


@dataclass
class PointResult:
    """One trained grid point: its best-validation epoch and metrics."""
    lr: float
    dropout: float
    best_epoch: int
    epochs_run: int
    seconds: float          # wall time until this point stopped (points train together)
    valid_metrics: dict[str, float]


@dataclass
class StrategyResult:
    """The outcome for one strategy on one split."""
    points: list[PointResult]            # every grid point (empty for Item Popularity)
    chosen: int | None                   # index into points of the selected grid point
    valid_scores: np.ndarray             # float32, aligned with candidates(split, "valid")
    test_scores: np.ndarray              # float32, aligned with candidates(split, "test")
    valid_metrics: dict[str, float] = field(default_factory=dict)  # of the selected model

    def selection(self) -> dict:
        chosen = None if self.chosen is None else asdict(self.points[self.chosen])
        return {"chosen": chosen, "valid_metrics": self.valid_metrics,
                "grid": [asdict(p) for p in self.points]}


# ----------------------------------------------------------------------------------------- store

class PointStore(Protocol):
    """Where finished grid points are kept so an interrupted run resumes without redoing them.
    `load` gives the point's result and, unless pruned, its best checkpoint (else None)."""
    def load(self, point: GridPoint) -> tuple[PointResult, State | None] | None: ...
    def save(self, point: GridPoint, result: PointResult, state: State) -> None: ...
    def prune(self, points: list[GridPoint], keep: GridPoint) -> None: ...


class DirectoryStore:
    """One atomically written .npz per finished grid point (result as JSON + parameters)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, point: GridPoint) -> Path:
        return self.root / f"{point.name}.npz"

    def load(self, point: GridPoint) -> tuple[PointResult, State | None] | None:
        path = self.path(point)
        if not path.exists():
            return None
        with np.load(path) as data:
            state = {name: data[name] for name in data.files if name != "result"}
            result = PointResult(**json.loads(str(data["result"])))
        return result, state or None

    def save(self, point: GridPoint, result: PointResult, state: State | None) -> None:
        write_npz(self.path(point), result=np.array(json.dumps(asdict(result))), **(state or {}))

    def prune(self, points: list[GridPoint], keep: GridPoint) -> None:
        """Drop the parameters of every point but `keep` (only the selected model is ever scored;
        a grid of MLPs x 5 splits x 13 strategies would otherwise fill gigabytes). Results stay,
        so selection never retrains; a pruned point that a changed grid selects is retrained."""
        for point in points:
            loaded = self.load(point) if point != keep else None
            if loaded is not None and loaded[1] is not None:
                self.save(point, loaded[0], None)


# ----------------------------------------------------------------------------------------- metrics

def ranked_top_labels(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """bool [n_users, k]: whether the candidate at each of the first k ranks is a positive, with
    ties broken against the positives (the order of xreflect.metrics.rank_candidates).

    No full sort. topk gives the k best score values v_0 >= ... >= v_{k-1}, which do not depend on
    tie-breaking. Rank j's tie group starts after the candidates scoring strictly more than v_j,
    all of which are among the top k (so they are counted there); within the group the negatives
    come first, so rank j holds a positive exactly when j - n_greater(v_j) >= n_neg_equal(v_j).
    n_neg_equal is read from the top k negative scores: it is exact whenever it could matter
    (when it is smaller than k minus the negatives scoring more)."""
    values = torch.topk(scores, k, dim=1).values                                        # [U, k]
    neg_values = torch.topk(scores.masked_fill(positive, -torch.inf), k, dim=1).values  # [U, k]
    greater = (values.unsqueeze(1) > values.unsqueeze(2)).sum(2)
    neg_equal = (neg_values.unsqueeze(1) == values.unsqueeze(2)).sum(2)
    rank = torch.arange(k, device=scores.device)
    return (rank - greater >= neg_equal) & torch.isfinite(values)


def torch_topk_metrics(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                       ks: list[int], chunk: int = 1024) -> dict[str, float]:
    """xreflect.metrics.topk_metrics on tensors (same pessimistic ties, padding never ranked),
    without sorting every candidate list: under 1 s for 6,040 users x 1,000+ candidates."""
    scores = torch.where(mask, scores.float(), torch.tensor(-torch.inf, device=scores.device))
    positive = labels & mask
    k_max = min(max(ks), scores.shape[1])
    ranked = torch.cat([ranked_top_labels(scores[i:i + chunk], positive[i:i + chunk], k_max)
                        for i in range(0, len(scores), chunk)]).double()
    n_pos = positive.sum(1)
    has = n_pos > 0
    ranked, n_pos = ranked[has], n_pos[has].double()
    discounts = 1.0 / torch.log2(torch.arange(2, max(ks) + 2, device=scores.device, dtype=torch.float64))
    out = {}
    for k in ks:
        hits = ranked[:, :k]  # fewer than k columns when a user has fewer than k candidates
        ideal = torch.cumsum(discounts[:k], 0)[(torch.clamp(n_pos, max=k) - 1).long()]
        out[f"precision@{k}"] = float((hits.sum(1) / k).mean())
        out[f"recall@{k}"] = float((hits.sum(1) / n_pos).mean())
        out[f"ndcg@{k}"] = float(((hits * discounts[:hits.shape[1]]).sum(1) / ideal).mean())
    return out


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


# ----------------------------------------------------------------------------------------- epochs

@dataclass(frozen=True)
class Samples:
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.users)


def epoch_samples(train: np.ndarray, pool: NegativePool, config: TrainConfig, epoch: int,
                  device: torch.device) -> Samples:
    """The epoch's shuffled samples: every training positive plus `negatives_per_positive` freshly
    drawn negatives per positive. Depends only on the seed and the epoch number."""
    rng = np.random.default_rng(seed_for(config.seed, "epoch", epoch))
    neg_users = np.repeat(train[:, 0].astype(np.int64), config.negatives_per_positive)
    neg_items = sample_negatives(pool, neg_users, rng)
    users = np.concatenate([train[:, 0].astype(np.int64), neg_users])
    items = np.concatenate([train[:, 1].astype(np.int64), neg_items])
    labels = np.concatenate([np.ones(len(train), np.float32), np.zeros(len(neg_users), np.float32)])
    order = rng.permutation(len(users))
    def move(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a[order]))
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t
    return Samples(move(users), move(items), move(labels))


def batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def train_epoch_stacked(model: StackedTwoTower, optimizer: StackedAdamW, samples: Samples, batch_size: int) -> None:
    for batch in batches(len(samples), batch_size):
        loss = stacked_loss(model.logits(samples.users[batch], samples.items[batch]), samples.labels[batch])
        loss.backward()
        optimizer.step(model.params)


def train_epoch_reference(model: TwoTower, optimizer: torch.optim.Optimizer, samples: Samples,
                          batch_size: int) -> None:
    model.train()
    for batch in batches(len(samples), batch_size):
        logits = model(samples.users[batch], samples.items[batch])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, samples.labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def is_eval_epoch(epoch: int, config: TrainConfig) -> bool:
    return epoch % config.eval_every == 0 or epoch == config.max_epochs


# ----------------------------------------------------------------------------------------- grid

@dataclass
class Tracker:
    """Early-stopping bookkeeping of one grid point."""
    point: GridPoint
    best: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: State | None = None
    stale: int = 0  # evaluations since the last improvement

    def update(self, epoch: int, metrics: dict[str, float], metric: str, state: Callable[[], State]) -> None:
        if metrics[metric] > self.best:
            self.best, self.best_epoch, self.best_metrics = metrics[metric], epoch, metrics
            self.best_state, self.stale = state(), 0
        else:
            self.stale += 1

    def result(self, epochs_run: int, seconds: float) -> PointResult:
        return PointResult(self.point.lr, self.point.dropout, self.best_epoch, epochs_run, round(seconds, 3),
                           self.best_metrics)


def train_points(split: Split, features: torch.Tensor, config: TrainConfig, points: list[GridPoint],
                 on_done: Callable[[GridPoint, PointResult, State], None], log: Log = log_stderr,
                 label: str = "") -> None:
    """Train `points` together; call `on_done` for each as soon as it stops (early or at max_epochs)."""
    device = features.device
    pool = negative_pool(split)
    valid = EvalSet.of(candidates(split, "valid"), device)
    init = init_state(split.n_users, features.shape[1], list(config.item_hidden), config.dim,
                      seed_for(config.seed, "init"))
    model = StackedTwoTower([init] * len(points), features, [p.dropout for p in points],
                            [seed_for(config.seed, "dropout", p.lr, p.dropout) for p in points])
    optimizer = StackedAdamW(model.params, [p.lr for p in points], config.weight_decay)
    trackers = [Tracker(p) for p in points]
    metric, ks = config.select_metric, metric_ks(config)
    start = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        train_epoch_stacked(model, optimizer, epoch_samples(split.train, pool, config, epoch, device),
                            config.batch_size)
        if not is_eval_epoch(epoch, config):
            continue
        scores = model.scores(valid.users, valid.items)
        for row, tracker in enumerate(trackers):
            tracker.update(epoch, valid.metrics(scores[row], ks), metric, lambda: model.state(row))
        stopped = [r for r, t in enumerate(trackers) if t.stale >= config.patience or epoch == config.max_epochs]
        elapsed = time.perf_counter() - start
        for row in stopped:
            on_done(trackers[row].point, trackers[row].result(epoch, elapsed), trackers[row].best_state)
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
               stack_size: int | None = None) -> StrategyResult:
    """Train the whole lr x dropout grid on one split, choose on validation, score test once."""
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

    def finish(point: GridPoint, result: PointResult, state: State) -> None:
        if store is not None:
            store.save(point, result, state)
        done[point] = (result, state)

    samples_per_epoch = len(split.train) * (1 + config.negatives_per_positive)
    size = max(1, stack_size or default_stack_size(device, len(todo), samples_per_epoch, config.batch_size))
    for start in range(0, len(todo), size):
        train_points(split, feats, config, todo[start:start + size], finish, log, label)
    chosen = grid[choose([done[p][0] for p in grid], config)]
    if done[chosen][1] is None:  # its checkpoint was pruned under an earlier grid: retrain it alone
        train_points(split, feats, config, [chosen], finish, log, label)
    result = select_and_test(split, feats, config, [done[p] for p in grid], grid.index(chosen))
    if store is not None:
        store.prune(grid, keep=chosen)
    return result


def choose(results: list[PointResult], config: TrainConfig) -> int:
    """Index of the best validation `select_metric` (the first in grid order on ties)."""
    return int(np.argmax([r.valid_metrics[config.select_metric] for r in results]))


def select_and_test(split: Split, features: torch.Tensor, config: TrainConfig,
                    trained: list[tuple[PointResult, State | None]], chosen: int | None = None) -> StrategyResult:
    """Choose the grid point with the best validation metric (first in grid order on ties) unless
    `chosen` says which; only then score the test candidates, once, with its best checkpoint."""
    chosen = choose([r for r, _ in trained], config) if chosen is None else chosen
    result, state = trained[chosen]
    assert state is not None, "the chosen grid point has no checkpoint"
    valid, test = candidates(split, "valid"), candidates(split, "test")
    device = features.device
    users = torch.arange(split.n_users, device=device)
    with torch.no_grad():
        valid_scores = score_state(state, features, users, torch.as_tensor(valid.items, device=device))
        test_scores = score_state(state, features, users, torch.as_tensor(test.items, device=device))
    return StrategyResult([r for r, _ in trained], chosen, valid_scores.cpu().numpy().astype(np.float32),
                          test_scores.cpu().numpy().astype(np.float32), result.valid_metrics)


# ----------------------------------------------------------------------------------------- baselines

def popularity(split: Split, ks: list[int] | None = None) -> StrategyResult:
    """Item Popularity: an item's score is its number of training interactions; nothing is trained."""
    counts = np.bincount(split.train[:, 1], minlength=split.n_items).astype(np.float32)
    valid, test = candidates(split, "valid"), candidates(split, "test")
    valid_scores = counts[valid.items]
    metrics = topk_metrics(valid_scores, valid.labels, valid.mask, ks or [1, 10])
    return StrategyResult([], None, valid_scores, counts[test.items], metrics)


def train_reference(split: Split, features: np.ndarray, config: TrainConfig, point: GridPoint,
                    device: torch.device | None = None) -> tuple[PointResult, State]:
    """The plain per-sample implementation of one grid point: nn.Module, torch.optim.AdamW, the same
    samples, initialisation, evaluation and early stopping as the stacked trainer."""
    device = device or default_device()
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    pool = negative_pool(split)
    valid = EvalSet.of(candidates(split, "valid"), device)
    init = init_state(split.n_users, feats.shape[1], list(config.item_hidden), config.dim,
                      seed_for(config.seed, "init"))
    torch.manual_seed(seed_for(config.seed, "dropout", point.lr, point.dropout))
    model = TwoTower(init, feats, point.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=point.lr, weight_decay=config.weight_decay)
    tracker, start, epoch = Tracker(point), time.perf_counter(), 0
    for epoch in range(1, config.max_epochs + 1):
        train_epoch_reference(model, optimizer, epoch_samples(split.train, pool, config, epoch, device),
                              config.batch_size)
        if is_eval_epoch(epoch, config):
            state = model.state()
            with torch.no_grad():
                scores = score_state(state, feats, valid.users, valid.items)
            tracker.update(epoch, valid.metrics(scores, metric_ks(config)), config.select_metric, lambda: state)
            if tracker.stale >= config.patience:
                break
    return tracker.result(epoch, time.perf_counter() - start), tracker.best_state


# ----------------------------------------------------------------------------------------- stage helpers

def load_features(paths: list[Path]) -> np.ndarray:
    """Concatenate float32 [n_items, d] embedding files column-wise, in the given order."""
    arrays = []
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: embedding file missing; run the embed stage (dvc repro)")
        array = np.load(path)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: expected a float [n_items, d] matrix, got {array.dtype} {array.shape}")
        if arrays and len(array) != len(arrays[0]):
            raise ValueError(f"{path}: {len(array)} rows, but {paths[0]} has {len(arrays[0])}; "
                             "every embedding source must have one row per item")
        arrays.append(array.astype(np.float32, copy=False))
    return np.concatenate(arrays, axis=1)


def train_cache_root() -> Path:
    return Path(os.environ.get("XREFLECT_CACHE_DIR", ".cache")) / "train"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_key(split_path: Path, embedding_paths: list[Path], config: TrainConfig) -> str:
    """sha256 of everything a finished grid point depends on: the split, the embeddings, the
    training params (except the grid lists; each point is its own file) and the trainer's code."""
    code = [file_sha256(Path(__file__).with_name(name)) for name in ("train.py", "model.py", "negatives.py")]
    payload = {"split": file_sha256(split_path), "embeddings": [file_sha256(p) for p in embedding_paths],
               "params": config.point_params(), "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
