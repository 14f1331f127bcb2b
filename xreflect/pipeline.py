"""Where the pipeline keeps its files, and a guard that dvc.yaml declares what a stage reads.

Strategies and chained prompts are data in params.yaml, but DVC only reruns a stage when a file in
its `deps` changes. A stage that reads a file its dvc.yaml entry does not declare would go stale
silently, so stages check their inputs against dvc.yaml and say what to add.
"""
from __future__ import annotations

from pathlib import Path

import yaml

DVC_YAML = Path("dvc.yaml")
DATASET_DIR = Path("data/dataset")
FILTERED_DIR = Path("data/filtered")
SPLITS_DIR = Path("data/splits")
RESPONSES_DIR = Path("data/responses")
EMBEDDINGS_DIR = Path("data/embeddings")
MODELS_DIR = Path("models")


def response_path(prompt_id: str) -> Path:
    return RESPONSES_DIR / f"{prompt_id}.jsonl"


def embedding_path(source: str) -> Path:
    return EMBEDDINGS_DIR / f"{source}.npy"


def split_paths(n_splits: int) -> list[Path]:
    return [SPLITS_DIR / f"split_{k}.npz" for k in range(n_splits)]


def check_declared_deps(stage: str, paths: list[Path], dvc_yaml: Path = DVC_YAML) -> None:
    """Fail when `stage` in dvc.yaml does not list every path in `paths` among its deps."""
    if not dvc_yaml.exists():
        return  # run outside a DVC project (tests, notebooks): nothing to keep in sync
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if stage not in stages:
        return
    declared = {Path(dep) for dep in stages[stage].get("deps", [])}
    missing = [str(path) for path in paths
               if not any(path == dep or dep in path.parents for dep in declared)]
    if missing:
        raise SystemExit(f"dvc.yaml: stage {stage!r} reads {missing} but does not list them in its "
                         "deps, so DVC would not rerun it when they change; add them to its deps")
