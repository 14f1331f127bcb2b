"""The train stage: grid-train the two-tower model for one strategy on every split.

For each split, the lr x dropout grid is trained with early stopping and selected on validation
(xreflect.training.grid); the selected model's test scores, validation scores and full-ranking top
items are written to models/<strategy>/split_<k>.npz, the grid's curves to
plots/training/<strategy>.csv. An empty source list is Item Popularity, which trains nothing.
placement.executor: local trains the splits here, one after another or `placement.workers` at a time; ray
sends them to a Ray cluster as one grid job each (xreflect.training.ray_jobs). The outs are the
same either way.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Mapping

import torch

from xreflect.core.io import atomic_path, log_stderr, write_json, write_npz
from xreflect.core.paths import MODELS_DIR, embedding_path, split_paths
from xreflect.data.split import Split, eval_negatives_mode, require_mode
from xreflect.paper.strategies import strategy_sources
from xreflect.training.baselines import popularity
from xreflect.training.config import train_config
from xreflect.training.executor import run_grid_jobs
from xreflect.training.features import load_features
from xreflect.training.jobs import GridJob
from xreflect.training.store import DirectoryStore, checkpoint_key, train_cache_root

CURVES_DIR = Path("plots/training")


def train_strategy(params: Mapping, strategy: str) -> None:
    """models/<strategy>/ (one npz per split and selection.json) and plots/training/<strategy>.csv."""
    params = dict(params)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for the fp32 matmuls
    sources = strategy_sources(params, strategy)
    config, overrides = train_config(params)
    full_k = max(int(k) for k in (params.get("evaluate") or {}).get("ks", [1, 10]))
    if overrides:
        log_stderr(f"train: dataset {params.get('dataset')!r} overrides {overrides} "
                   "(train.dataset_overrides and placement.dataset_overrides in params.yaml; a key you change wins)")
    embedding_paths = [embedding_path(strategy, source) for source in sources]
    features = load_features(embedding_paths, config.normalize_sources) if sources else None
    out_dir = MODELS_DIR / strategy
    splits = split_paths(int(params["split"]["n_splits"]))
    mode = eval_negatives_mode(params)
    for split_path in splits:  # a split of the other split.eval_negatives mode is stale: refused before training
        require_mode(split_path, mode)
    selection, start = {}, time.perf_counter()
    jobs = [GridJob(k, f"{strategy} split {k + 1}/{len(splits)}: ", split_path, config,
                    DirectoryStore(train_cache_root() / strategy / checkpoint_key(split_path, embedding_paths, config)),
                    full_k)
            for k, split_path in enumerate(splits)]
    if features is None:
        finished = ((job, popularity(Split.load(job.split_path), full_k=full_k)) for job in jobs)
    else:  # placement.executor: the jobs here (placement.workers at a time), or all at once on Ray
        finished = run_grid_jobs(jobs, features, config.executor)
    for n_done, (job, result) in enumerate(finished, 1):
        write_npz(out_dir / f"split_{job.index}.npz", test_scores=result.test_scores, valid_scores=result.valid_scores,
                  full_test_top=result.full_test_top)
        selection[job.index] = result.selection()
        elapsed = time.perf_counter() - start
        log_stderr(f"train {job.label}done; {elapsed:.0f} s so far, about "
                   f"{elapsed / n_done * (len(jobs) - n_done):.0f} s left")
    write_json(out_dir / "selection.json", {"strategy": strategy, "sources": sources,
                                            "splits": {f"split_{k}": selection[k] for k in sorted(selection)}})
    write_curves(CURVES_DIR / f"{strategy}.csv", selection, config.select_metric)


def write_curves(path: Path, selection: dict[int, dict], metric: str) -> None:
    """Every grid point's training curve on every split, one row per evaluation epoch, for
    `dvc plots` (the top-level plots in dvc.yaml overlay them across experiments). Item Popularity
    trains nothing: one row per split at epoch 0 with its validation metric, no loss."""
    columns = ["split", "grid_point", "selected", "epoch", f"valid_{metric}", "train_loss"]
    rows = []
    for k in sorted(selection):
        chosen = selection[k]["chosen"]
        if not selection[k]["grid"]:
            rows.append({"split": k, "grid_point": "no training", "selected": True, "epoch": 0,
                         f"valid_{metric}": round(selection[k]["valid_metrics"][metric], 6), "train_loss": None})
        for point in selection[k]["grid"]:
            name = f"lr={point['lr']:g} dropout={point['dropout']:g}"
            selected = chosen is not None and (point["lr"], point["dropout"]) == (chosen["lr"], chosen["dropout"])
            rows += [{"split": k, "grid_point": name, "selected": selected, **entry} for entry in point["curve"]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:  # no pandas: 0.2 s less per stage start
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
