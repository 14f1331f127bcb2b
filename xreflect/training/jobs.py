"""A grid job: one split of one strategy, the unit of work of both executors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xreflect.training.config import TrainConfig
from xreflect.training.store import PointStore


@dataclass(frozen=True)
class GridJob:
    """One split of one strategy: the grid that train_grid trains, and where its points are kept."""
    index: int               # the split's number (outs are models/<strategy>/split_<index>.npz)
    label: str               # prefix of the job's log lines
    split_path: Path
    config: TrainConfig
    store: PointStore | None
    full_k: int | None = None  # keep the chosen model's top-full_k test items (full-ranking protocol)
