"""What grid training produces: one result per grid point and the selected model's scores."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class PointResult:
    """One trained grid point: its best-validation epoch and metrics."""
    lr: float
    dropout: float
    best_epoch: int
    epochs_run: int
    seconds: float          # wall time until this point stopped (points train together)
    valid_metrics: dict[str, float]
    precision: str = "fp32"  # the tower's training dtype (train.precision as resolved on the machine)
    # The training curve: at each evaluation epoch, {"epoch", "valid_<select_metric>", "train_loss"}
    # (the epoch's mean training loss); for plots/training/<strategy>.csv.
    curve: list[dict] = field(default_factory=list)


@dataclass
class StrategyResult:
    """The outcome for one strategy on one split."""
    points: list[PointResult]            # every grid point (empty for Item Popularity)
    chosen: int | None                   # index into points of the selected grid point
    valid_scores: np.ndarray             # float32, aligned with candidates(split, "valid")
    test_scores: np.ndarray              # float32, aligned with candidates(split, "test")
    valid_metrics: dict[str, float] = field(default_factory=dict)  # of the selected model
    # int32 [n_users, k]: the selected model's top-k test items under the full-ranking protocol
    # (xreflect/evaluation/full_ranking.py); None when not asked for
    full_test_top: np.ndarray | None = None

    def selection(self) -> dict:
        chosen = None if self.chosen is None else asdict(self.points[self.chosen])
        return {"chosen": chosen, "valid_metrics": self.valid_metrics,
                "grid": [asdict(p) for p in self.points]}
