"""The random streams of one split's training: each depends on `train.seed`, the split's own seed
and what it drives, so reruns are identical while the ± over splits includes the variance from
initialisation, dropout and negative sampling (not only from the data split)."""
from __future__ import annotations

from xreflect.data.split import Split
from xreflect.training.model import seed_for
from xreflect.training.config import GridPoint, TrainConfig


def init_seed(config: TrainConfig, split: Split) -> int:
    """Initial parameters: shared by the split's grid points, so they differ only in lr and dropout."""
    return seed_for(config.seed, "init", split.seed)


def dropout_seed(config: TrainConfig, split: Split, point: GridPoint) -> int:
    return seed_for(config.seed, "dropout", split.seed, point.lr, point.dropout)


def epoch_seed(config: TrainConfig, split: Split, epoch: int) -> int:
    """An epoch's training negatives and batch order."""
    return seed_for(config.seed, "epoch", split.seed, epoch)
