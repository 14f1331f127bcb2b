"""The plain per-sample implementation of one grid point (nn.Module, torch.optim.AdamW), kept for
the benchmark and for the test that the stacked trainer computes the same thing."""
from __future__ import annotations

import time

import numpy as np
import torch

from xreflect.data.split import Split, candidates
from xreflect.training.model import State, TwoTower, init_state, score_state
from xreflect.training.negatives import negative_pool
from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.epochs import epoch_samples, is_eval_epoch, train_epoch_reference
from xreflect.training.grid import EvalSet, Tracker, default_device, metric_ks
from xreflect.training.results import PointResult
from xreflect.training.seeds import dropout_seed, init_seed


def train_reference(split: Split, features: np.ndarray, config: TrainConfig, point: GridPoint,
                    device: torch.device | None = None) -> tuple[PointResult, State]:
    """The plain per-sample implementation of one grid point: nn.Module, torch.optim.AdamW, the same
    samples, initialisation, evaluation and early stopping as the stacked trainer."""
    device = device or default_device()
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    pool = negative_pool(split)
    valid = EvalSet.of(candidates(split, "valid"), device)
    init = init_state(split.n_users, feats.shape[1], list(config.item_hidden), config.dim,
                      init_seed(config, split))
    torch.manual_seed(dropout_seed(config, split, point))
    model = TwoTower(init, feats, point.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=point.lr, weight_decay=config.weight_decay)
    tracker, start, epoch = Tracker(point), time.perf_counter(), 0
    for epoch in range(1, config.max_epochs + 1):
        train_epoch_reference(model, optimizer, epoch_samples(split, pool, config, epoch, device),
                              config.batch_size)
        if is_eval_epoch(epoch, config):
            state = model.state()
            with torch.no_grad():
                scores = score_state(state, feats, valid.users, valid.items)
            tracker.update(epoch, valid.metrics(scores, metric_ks(config)), config.select_metric, lambda: state)
            if tracker.stale >= config.patience:
                break
    return tracker.result(epoch, time.perf_counter() - start), tracker.best_state
