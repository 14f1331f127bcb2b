"""Where the pipeline keeps its files.

Per strategy, everything downstream of the filtered items has its own directory (responses,
embeddings, models), so a strategy's stages depend only on what that strategy uses: DVC cannot
interpolate a per-strategy list of files into `deps`, but it can a directory.
"""
from __future__ import annotations

import os
from pathlib import Path

DATASET_DIR = Path("data/dataset")
FILTERED_DIR = Path("data/filtered")
SPLITS_DIR = Path("data/splits")
RESPONSES_DIR = Path("data/responses")
EMBEDDINGS_DIR = Path("data/embeddings")
MODELS_DIR = Path("models")
DATA_REPORT = Path("metrics/data.json")      # what the filter stage kept (Table 1)
SPLITS_REPORT = Path("metrics/splits.json")  # sizes of each split
# Caches beside the pipeline, outside DVC's outs (DVC deletes a stage's outs before rerunning it):
# LLM responses, text embeddings, finished grid points, batch files.
CACHE_ENV = "XREFLECT_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, ".cache"))


def response_path(strategy: str, prompt_id: str) -> Path:
    return RESPONSES_DIR / strategy / f"{prompt_id}.jsonl"


def embedding_path(strategy: str, source: str) -> Path:
    return EMBEDDINGS_DIR / strategy / f"{source}.npy"


def split_paths(n_splits: int) -> list[Path]:
    return [SPLITS_DIR / f"split_{k}.npz" for k in range(n_splits)]
