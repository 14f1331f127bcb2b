"""One training epoch: the epoch's samples (positives plus fresh negatives) and the optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xreflect.data.split import Split
from xreflect.training.model import StackedAdamW, StackedTwoTower, TwoTower, batches, point_losses
from xreflect.training.negatives import NegativePool, sample_negatives
from xreflect.training.config import TrainConfig
from xreflect.training.seeds import epoch_seed


@dataclass(frozen=True)
class Samples:
    """An epoch's samples: [N] each, or [S, N] for S stacked splits (see stack_samples)."""
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.users.shape[-1]


def stack_samples(parts: list[Samples]) -> Samples:
    """Several splits' epoch samples side by side ([S, N]); they must have as many samples."""
    return Samples(torch.stack([p.users for p in parts]), torch.stack([p.items for p in parts]),
                   torch.stack([p.labels for p in parts]))


def epoch_samples(split: Split, pool: NegativePool, config: TrainConfig, epoch: int,
                  device: torch.device) -> Samples:
    """The epoch's shuffled samples: every training positive plus `negatives_per_positive` freshly
    drawn negatives per positive. Depends only on the seeds, the split and the epoch number."""
    rng = np.random.default_rng(epoch_seed(config, split, epoch))
    train = split.train
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


def train_epoch_stacked(model: StackedTwoTower, optimizer: StackedAdamW, samples: Samples,
                        batch_size: int) -> torch.Tensor:
    """One epoch of every stacked grid point; returns each point's mean training loss over the
    epoch's batches (a tensor on the device, read only at evaluation epochs: no sync per batch)."""
    total = None
    for number, batch in enumerate(batches(len(samples), batch_size), start=1):
        losses = point_losses(model.logits(samples.users[..., batch], samples.items[..., batch]),
                              model.row_labels(samples.labels[..., batch]))
        losses.sum().backward()
        optimizer.step(model.params)
        total = losses.detach() if total is None else total + losses.detach()
    return total / number


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
