"""Dataset sources: each one produces the data contract (xreflect.data.contract) in a directory.

A source is `prepare(out_dir, name, entry, params)`: `entry` is its `datasets.<name>` section of
params.yaml and `params` the whole file. Modules load lazily so that
the demo needs none of the download machinery.
"""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any, Callable

from xreflect.core.config import ParamsError, dataset_entry
from xreflect.core.io import log_stderr
from xreflect.core.paths import DATASET_DIR
from xreflect.data.contract import IMAGES_DIR

SOURCES = {
    "demo": "xreflect.data.sources.registry:prepare_demo",
    "movielens-1m": "xreflect.data.sources.movielens:prepare",
    "amazon-software": "xreflect.data.sources.amazon:prepare",
}


def get_source(name: str, entry: dict[str, Any]) -> Callable[..., None]:
    source = entry.get("source")
    if source not in SOURCES:
        raise ParamsError(f"params.yaml: datasets.{name}.source is {source!r}; allowed values are "
                          f"{sorted(SOURCES)}")
    module_name, function_name = SOURCES[source].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def prepare_dataset(out_dir: Path, name: str, entry: dict[str, Any], params: dict[str, Any]) -> None:
    get_source(name, entry)(out_dir, name, entry, params)
    # Stages declare images/ as a dependency: it must exist even when no item has an image.
    (Path(out_dir) / IMAGES_DIR).mkdir(parents=True, exist_ok=True)


def prepare_demo(out_dir: Path, name: str, entry: dict[str, Any], params: dict[str, Any]) -> None:
    """The synthetic demo, generated from `datasets.<name>.generator` in params.yaml (no network)."""
    from xreflect.data.sources.demo import build_demo

    config = entry.get("generator") or {}
    build_demo(out_dir, seed=int(config.get("seed", 0)), n_users=int(config.get("n_users", 400)),
               n_items=int(config.get("n_items", 500)), image_size=int(config.get("image_size", 96)))


def write_dataset(params: dict[str, Any]) -> None:
    """The download stage: the selected dataset as the data contract in data/dataset/."""
    name, entry = dataset_entry(params)
    # Build beside the final directory and swap it in, so an interrupted run never leaves a
    # half-written dataset under data/dataset.
    partial = DATASET_DIR.with_name(DATASET_DIR.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    prepare_dataset(partial, name, entry, params)
    shutil.rmtree(DATASET_DIR, ignore_errors=True)
    partial.rename(DATASET_DIR)
    log_stderr(f"download: dataset {name!r} written to {DATASET_DIR}/")
