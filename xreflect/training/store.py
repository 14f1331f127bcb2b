"""Finished grid points kept outside DVC's outs, so an interrupted train stage resumes where it stopped."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from xreflect.core.io import write_npz
from xreflect.training.model import State
from xreflect.core.paths import cache_dir
from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.results import PointResult


TRAINING = Path(__file__).resolve().parent
# The code that decides what a finished grid point contains; editing it invalidates the store.
TRAINER_CODE = [TRAINING / name for name in ("model.py", "negatives.py", "config.py", "epochs.py", "grid.py",
                                             "precision.py", "seeds.py")]


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



def train_cache_root() -> Path:
    return cache_dir() / "train"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_key(split_path: Path, embedding_paths: list[Path], config: TrainConfig) -> str:
    """sha256 of everything a finished grid point depends on: the split, the embeddings, the
    training params (except the grid lists; each point is its own file) and the trainer's code."""
    code = [file_sha256(path) for path in TRAINER_CODE]
    payload = {"split": file_sha256(split_path), "embeddings": [file_sha256(p) for p in embedding_paths],
               "params": config.point_params(), "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
