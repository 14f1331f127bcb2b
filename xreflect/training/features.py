"""Item-tower inputs: the strategy's embedding sources concatenated column-wise, each optionally
scaled to unit L2 norm per item first (train.normalize_sources), so that no source dominates the
input scale only because its encoder emits larger vectors (Sentence-BERT rows have norm 1, raw CLIP
image features about 10)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xreflect.core.errors import DataError


def load_features(paths: list[Path], normalize: bool = False) -> np.ndarray:
    """Concatenate float32 [n_items, d] embedding files column-wise, in the given order; with
    `normalize`, each file's rows are first scaled to unit L2 norm (all-zero rows stay zero)."""
    arrays = []
    for path in paths:
        if not Path(path).exists():
            raise DataError(f"{path}: embedding file missing; run the embed stage (dvc repro)")
        array = np.load(path)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{path}: expected a float [n_items, d] matrix, got {array.dtype} {array.shape}")
        if arrays and len(array) != len(arrays[0]):
            raise DataError(f"{path}: {len(array)} rows, but {paths[0]} has {len(arrays[0])}; "
                             "every embedding source must have one row per item")
        array = array.astype(np.float32, copy=False)
        arrays.append(l2_normalize(array) if normalize else array)
    return np.concatenate(arrays, axis=1)


def l2_normalize(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)
