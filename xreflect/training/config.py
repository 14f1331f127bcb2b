"""The params.yaml `train` and `placement` sections as a validated config, and the lr x dropout
grid it spans."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

from xreflect.core.config import ParamsError

METRIC_NAMES = ("precision", "recall", "ndcg")
PRECISIONS = ("auto", "fp32", "bf16")  # what each means: xreflect/training/precision.py
EXECUTORS = ("local", "ray")           # xreflect/training/executor.py
# The keys of the params.yaml `placement` section: they only change where or how a train stage's
# work runs, never what it computes (up to float reduction order). They live outside `train` so that
# the train stage can depend on `train` as a whole in dvc.yaml (every key there changes results) and
# on no placement key, so that switching one neither reruns the stage nor misses DVC's run-cache;
# they are also left out of a grid point's checkpoint key (point_params).
PLACEMENT_KEYS = ("executor", "stack_splits", "workers")


@dataclass(frozen=True)
class TrainConfig:
    """The params.yaml `train` section, and `placement` (PLACEMENT_KEYS) beside it."""
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
    precision: str = "auto"     # the towers' matmul dtype: auto | fp32 | bf16 (training/precision.py)
    normalize_sources: bool = False  # L2-normalise each embedding source's rows before concatenating
    # placement
    executor: str = "local"     # where the grid jobs run: local | ray (training/executor.py)
    stack_splits: bool = False  # local executor: train every split's grid in one stack (grid.train_grids_stacked)
    workers: int = 1            # local executor: grid jobs trained side by side in this many processes

    @classmethod
    def from_params(cls, section: dict | None) -> "TrainConfig":
        """From the keys of `train` and `placement` in one mapping (train_config splits them)."""
        section = dict(section or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(allowed))
        if unknown:
            raise ParamsError(f"params.yaml: train.{unknown[0]} is not a training parameter; "
                             f"allowed keys: {', '.join(name for name in allowed if name not in PLACEMENT_KEYS)}")
        values = {}
        for name, value in section.items():
            if name == "lr":
                values[name] = _number_list("lr", value, "learning rate", "[0.001]", lambda x: x > 0)
            elif name == "dropout":
                values[name] = _number_list("dropout", value, "dropout rate", "[0.1]", lambda x: 0 <= x < 1)
            elif name == "item_hidden":
                if not isinstance(value, list) or not all(_is_int(v) and v > 0 for v in value):
                    raise ParamsError(f"params.yaml: train.item_hidden must be a list of positive layer sizes "
                                     f"(e.g. [512, 256], or [] for a linear item tower), got {value!r}")
                values[name] = tuple(int(v) for v in value)
            elif name in ("precision", "executor"):
                allowed_values = PRECISIONS if name == "precision" else EXECUTORS
                if value not in allowed_values:
                    raise ParamsError(f"params.yaml: {_key(name)} is {value!r}; use one of {', '.join(allowed_values)}")
                values[name] = value
            elif name == "select_metric":
                values[name] = _metric_name(value)
            elif name == "normalize_sources":
                if not isinstance(value, bool):
                    raise ParamsError(f"params.yaml: train.normalize_sources must be true or false, got {value!r}")
                values[name] = value
            elif name == "stack_splits":
                if not isinstance(value, bool):
                    raise ParamsError(f"params.yaml: placement.stack_splits must be true or false, got {value!r}")
                values[name] = value
            elif name == "weight_decay":
                if not _is_number(value) or value < 0:
                    raise ParamsError(f"params.yaml: train.weight_decay must be a number >= 0, got {value!r}")
                values[name] = float(value)
            else:
                if not _is_int(value) or value < (0 if name == "seed" else 1):
                    raise ParamsError(f"params.yaml: {_key(name)} must be a positive integer, got {value!r}")
                values[name] = int(value)
        return cls(**values)

    def grid(self) -> list["GridPoint"]:
        return [GridPoint(lr, dropout) for lr in self.lr for dropout in self.dropout]

    def point_params(self) -> dict:
        """Everything that shapes one grid point's training, except the grid lists themselves (so a
        cached point stays valid when other points are added to or removed from the grid)."""
        params = asdict(self)
        del params["lr"], params["dropout"]
        for key in PLACEMENT_KEYS:  # where a point trains does not change what it computes
            del params[key]
        return params

    def select(self) -> tuple[str, int]:
        name, k = self.select_metric.split("@")
        return name, int(k)


def _key(name: str) -> str:
    return f"{'placement' if name in PLACEMENT_KEYS else 'train'}.{name}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_list(key: str, value: object, what: str, example: str, valid: Callable[[float], bool]) -> tuple[float, ...]:
    if value is None or value == []:
        raise ParamsError(f"params.yaml: train.{key} is empty; give at least one {what}, e.g. {example}")
    values = value if isinstance(value, list) else [value]
    bad = [v for v in values if not _is_number(v) or not valid(v)]
    if bad:
        raise ParamsError(f"params.yaml: train.{key} holds {bad[0]!r}, which is not a valid {what}; "
                         f"give a list of numbers, e.g. {example}")
    return tuple(float(v) for v in values)


def _metric_name(value: object) -> str:
    name, _, k = str(value).partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise ParamsError(f"params.yaml: train.select_metric is {value!r}; use <metric>@<k> with metric one of "
                         f"{', '.join(METRIC_NAMES)}, e.g. recall@10")
    return f"{name}@{int(k)}"


@dataclass(frozen=True)
class GridPoint:
    lr: float
    dropout: float

    @property
    def name(self) -> str:
        return f"lr={self.lr:g}_dropout={self.dropout:g}"


def paper_defaults() -> dict:
    """The paper's protocol: TrainConfig's defaults (with the default placement)."""
    return {f.name: f.default for f in fields(TrainConfig)}


def train_config(params: dict) -> tuple[TrainConfig, dict]:
    """The validated training config for the chosen dataset (`train` and `placement`, each with its
    dataset overrides), and the dataset overrides it applied."""
    from xreflect.core.config import section_with_overrides

    placement = _placement_section(params)
    defaults = paper_defaults()
    train_values, applied = section_with_overrides(params, "train", defaults)
    placement = {key: defaults[key] for key in PLACEMENT_KEYS} | placement  # a key left out: its default
    placement_values, placed = section_with_overrides({**params, "placement": placement}, "placement", defaults)
    return TrainConfig.from_params({**train_values, **placement_values}), {**applied, **placed}


def _placement_section(params: dict) -> dict:
    """params.yaml's `placement`, after refusing a placement key under `train` (where it used to
    live) and a result key under `placement`."""
    train = params.get("train") or {}
    in_train = set(train)
    for overrides in (train.get("dataset_overrides") or {}).values():
        in_train |= set(overrides or {})
    misplaced = [key for key in PLACEMENT_KEYS if key in in_train]
    if misplaced:
        key = misplaced[0]
        raise ParamsError(f"params.yaml: train.{key} is now placement.{key}: it says where the work runs, not "
                          f"what it computes, so the train stages do not depend on it; move it under "
                          f"`placement:` (e.g. dvc exp run -S placement.{key}=...)")
    placement = params.get("placement") or {}
    if not isinstance(placement, dict):
        raise ParamsError(f"params.yaml: placement must be a mapping of {', '.join(PLACEMENT_KEYS)}, got {placement!r}")
    unknown = sorted(set(placement) - set(PLACEMENT_KEYS) - {"dataset_overrides"})
    if unknown:
        raise ParamsError(f"params.yaml: placement.{unknown[0]} is not a placement key (those say where the "
                          f"work runs: {', '.join(PLACEMENT_KEYS)}); keys that change results go under `train:`")
    return dict(placement)
