"""DVC stage `evaluate`: test metrics of every strategy on every split, mean ± std over splits.

Reads data/splits/, models/<strategy>/split_<k>.npz for each strategy in `run`, and params run,
strategies, split, evaluate.
Writes metrics/summary.json (mean per strategy x metric: what `dvc metrics diff` compares),
metrics/detail.json (mean, std, per split, and the grid points chosen) and metrics/report.md
(tables shaped like the paper's Tables 2 and 3, relative gains against evaluate.baseline).
"""
from __future__ import annotations

import sys


import numpy as np

from xreflect.cli import run_stage
from xreflect.config import ParamsError, dataset_entry, load_params, run_strategies
from xreflect.strategies import strategy_sources
from xreflect.data.split import Split
from xreflect.io import read_json, write_json, write_text
from xreflect.pipeline import MODELS_DIR, split_paths
from xreflect.report import aggregate, markdown_table, split_metrics
from xreflect.training.baselines import global_popularity_metrics


def main() -> None:
    params = load_params()
    dataset, _ = dataset_entry(params)
    config = params.get("evaluate") or {}
    ks = [int(k) for k in config.get("ks", [1, 10])]
    baseline = config.get("baseline")
    strategies = run_strategies(params)
    for strategy in strategies:
        strategy_sources(params, strategy)
    if baseline is not None and baseline not in (params.get("strategies") or {}):
        raise ParamsError(f"params.yaml: evaluate.baseline={baseline!r} is not a strategy; allowed "
                          f"values are {sorted(params.get('strategies') or {})}")
    not_run = [s for s in params.get("strategies") or {} if s not in strategies]
    if not_run:
        print(f"evaluate: reporting the strategies in `run`; defined but not run: {not_run}", file=sys.stderr)
    splits = [Split.load(path) for path in split_paths(int(params["split"]["n_splits"]))]
    results, selections = {}, {}
    for strategy in strategies:
        per_split = []
        for k, split in enumerate(splits):
            with np.load(MODELS_DIR / strategy / f"split_{k}.npz") as scores:
                per_split.append(split_metrics(split, scores["test_scores"], ks))
        results[strategy] = aggregate(per_split)
        selection = MODELS_DIR / strategy / "selection.json"
        selections[strategy] = read_json(selection) if selection.exists() else None
        if strategy == "popularity":
            results["popularity_global"] = aggregate([global_popularity_metrics(s, ks) for s in splits])
    summary = {s: {m: round(v["mean"], 6) for m, v in r.items()} for s, r in results.items()}
    write_json("metrics/summary.json", summary)
    write_json("metrics/detail.json", {"dataset": dataset, "backbone": params.get("backbone"),
                                       "n_splits": len(splits), "results": results,
                                       "selection": selections})
    at = lambda k: [f"{m}@{k}" for m in ("precision", "recall", "ndcg")]  # noqa: E731
    title = f"dataset `{dataset}`, backbone `{params.get('backbone')}`, mean ± std over {len(splits)} splits"
    report = [f"# Results: {title}\n",
              "Item Popularity (sampled candidates) is scored like every other row: held-out positives "
              "plus the stored negatives. Item Popularity (global top-K) ranks the whole catalog once "
              "for everyone, seen items included; the paper's Item Popularity figures match this one.\n"]
    gains = f"relative gains against `{baseline}`" if baseline in strategies else f"`{baseline}` not in `run`: no gains"
    for k in sorted(ks, reverse=True):
        report += [f"\n## Top-{k} ({gains})\n\n", markdown_table(results, at(k), baseline)]
    write_text("metrics/report.md", "".join(report))
    print(markdown_table(results, at(max(ks)), baseline), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
