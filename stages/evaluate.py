"""DVC stage `evaluate`: test metrics of every strategy on every split, mean ± std over splits,
under two protocols: the paper's sampled candidates (held-out positives + stored negatives) and
full ranking (every item the user did not interact with in training or validation;
xreflect/full_ranking.py).

Reads data/splits/, models/<strategy>/split_<k>.npz for each strategy in `run`, and params run,
strategies, split, evaluate.
Writes metrics/summary.json (mean per strategy x metric, sampled at the top level as before and
full ranking under "full_ranking": what `dvc metrics diff` compares), metrics/detail.json
("results" and "full_results", both {strategy: {metric: {mean, std, per_split}}}, and the grid
points chosen) and metrics/report.md (tables shaped like the paper's Tables 2 and 3 for each
protocol, relative gains against evaluate.baseline).
"""
from __future__ import annotations

import sys


import numpy as np

from xreflect.cli import run_stage
from xreflect.config import ParamsError, dataset_entry, load_params, run_strategies
from xreflect.strategies import strategy_sources
from xreflect.data.split import Split, eval_negatives_mode
from xreflect.full_ranking import full_metrics
from xreflect.io import read_json, write_json, write_text
from xreflect.pipeline import MODELS_DIR, split_paths
from xreflect.report import FULL_RANKING_LABELS, aggregate, markdown_table, ordering, split_metrics
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
    if "full_ranking" in strategies:  # the summary's key for the second protocol
        raise ParamsError("params.yaml: `full_ranking` cannot be a strategy name (metrics/summary.json uses "
                          "it for the full-ranking protocol); rename that strategy")
    if baseline is not None and baseline not in (params.get("strategies") or {}):
        raise ParamsError(f"params.yaml: evaluate.baseline={baseline!r} is not a strategy; allowed "
                          f"values are {sorted(params.get('strategies') or {})}")
    not_run = [s for s in params.get("strategies") or {} if s not in strategies]
    if not_run:
        print(f"evaluate: reporting the strategies in `run`; defined but not run: {not_run}", file=sys.stderr)
    mode = eval_negatives_mode(params)
    splits = [Split.load(path, mode) for path in split_paths(int(params["split"]["n_splits"]))]
    results, full_results, selections = {}, {}, {}
    for strategy in strategies:
        per_split, per_split_full = [], []
        for k, split in enumerate(splits):
            path = MODELS_DIR / strategy / f"split_{k}.npz"
            with np.load(path) as scores:
                per_split.append(split_metrics(split, scores["test_scores"], ks))
                if "full_test_top" not in scores.files:
                    raise ValueError(f"{path}: no full-ranking top items (written before the full-ranking "
                                     f"protocol existed); rerun the train stage of {strategy!r}")
                per_split_full.append(full_metrics(split, "test", scores["full_test_top"], ks, where=str(path)))
        results[strategy] = aggregate(per_split)
        full_results[strategy] = aggregate(per_split_full)
        selection = MODELS_DIR / strategy / "selection.json"
        selections[strategy] = read_json(selection) if selection.exists() else None
        if strategy == "popularity":
            results["popularity_global"] = aggregate([global_popularity_metrics(s, ks) for s in splits])
    means = lambda res: {s: {m: round(v["mean"], 6) for m, v in r.items()} for s, r in res.items()}  # noqa: E731
    write_json("metrics/summary.json", {**means(results), "full_ranking": means(full_results)})
    write_json("metrics/detail.json", {"dataset": dataset, "backbone": params.get("backbone"),
                                       "n_splits": len(splits), "eval_negatives_mode": mode, "results": results,
                                       "full_results": full_results, "selection": selections})
    at = lambda k: [f"{m}@{k}" for m in ("precision", "recall", "ndcg")]  # noqa: E731
    title = f"dataset `{dataset}`, backbone `{params.get('backbone')}`, mean ± std over {len(splits)} splits"
    report = [f"# Results: {title}\n",
              "\n**Sampled candidates** (the paper's protocol, used for model selection): each user's "
              "held-out positives plus the stored negatives of that part. Item Popularity (sampled "
              "candidates) is scored like every other row. Item Popularity (global top-K) ranks the whole "
              "catalog once for everyone, seen items included; the paper's Item Popularity figures match "
              "this one.\n"]
    gains = f"relative gains against `{baseline}`" if baseline in strategies else f"`{baseline}` not in `run`: no gains"
    for k in sorted(ks, reverse=True):
        report += [f"\n## Top-{k}, sampled candidates ({gains})\n\n", markdown_table(results, at(k), baseline)]
    report += ["\n**Full ranking**: every item the user did not interact with in training or validation "
               "is a candidate, the test items are the positives (the same selected models). Item "
               "Popularity (unseen items) ranks those items by training count.\n"]
    for k in sorted(ks, reverse=True):
        report += [f"\n## Top-{k}, full ranking ({gains})\n\n",
                   markdown_table(full_results, at(k), baseline, FULL_RANKING_LABELS)]
    metric = f"recall@{max(ks)}"
    report += [f"\n## Order of the strategies by mean {metric.replace('recall', 'Recall')}\n\n",
               f"- sampled candidates: {ordering(results, metric, strategies)}\n",
               f"- full ranking: {ordering(full_results, metric, strategies, FULL_RANKING_LABELS)}\n"]
    write_text("metrics/report.md", "".join(report))
    print("sampled candidates:\n" + markdown_table(results, at(max(ks)), baseline), file=sys.stderr)
    print("full ranking:\n" + markdown_table(full_results, at(max(ks)), baseline, FULL_RANKING_LABELS), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
