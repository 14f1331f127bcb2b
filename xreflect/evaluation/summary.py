"""The evaluate stage: test metrics of every strategy on every split, mean ± std over splits,
under two protocols: the paper's sampled candidates (held-out positives + stored negatives) and
full ranking (every item the user did not interact with in training or validation).

Reads data/splits/ and models/<strategy>/split_<k>.npz for each strategy in `run`. Writes
metrics/summary.json (mean per strategy x metric, sampled at the top level and full ranking under
"full_ranking": what `dvc metrics diff` compares), metrics/detail.json ("results" and
"full_results", both {strategy: {metric: {mean, std, per_split}}}, and the grid points chosen) and
metrics/report.md (xreflect.evaluation.report).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from xreflect.core.config import ParamsError, dataset_entry, run_strategies
from xreflect.core.errors import DataError
from xreflect.core.io import log_stderr, read_json, write_json, write_text
from xreflect.core.paths import MODELS_DIR, split_paths
from xreflect.data.split import Split, eval_negatives_mode
from xreflect.evaluation.full_ranking import full_metrics
from xreflect.evaluation.popularity import global_popularity_metrics
from xreflect.evaluation.report import FULL_RANKING_LABELS, aggregate, markdown_table, report_markdown, split_metrics
from xreflect.paper.strategies import strategy_sources


def evaluate_run(params: Mapping) -> None:
    """metrics/summary.json, metrics/detail.json and metrics/report.md for the strategies in `run`."""
    params = dict(params)
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
        log_stderr(f"evaluate: reporting the strategies in `run`; defined but not run: {not_run}")
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
                    raise DataError(f"{path}: no full-ranking top items (written before the full-ranking "
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
    write_text("metrics/report.md", report_markdown(results, full_results, strategies, ks, baseline,
                                                    f"dataset `{dataset}`, backbone `{params.get('backbone')}`, "
                                                    f"mean ± std over {len(splits)} splits"))
    at_k = [f"{m}@{max(ks)}" for m in ("precision", "recall", "ndcg")]
    log_stderr("sampled candidates:\n" + markdown_table(results, at_k, baseline))
    log_stderr("full ranking:\n" + markdown_table(full_results, at_k, baseline, FULL_RANKING_LABELS))
