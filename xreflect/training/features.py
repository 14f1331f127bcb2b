"""Item-tower inputs: the strategy's embedding sources concatenated column-wise."""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
