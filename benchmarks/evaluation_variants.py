"""Test metrics of chosen strategies under training variants, both protocols (not a test: run by hand).

    python -m benchmarks.evaluation_variants --strategies text_image xreflect --normalize false true
    python -m benchmarks.evaluation_variants --strategies text text_image xreflect --seeding per-split same
    python -m benchmarks.evaluation_variants --strategies text_image --normalize false true --scale-source image=10

Reads params.yaml (train section with its dataset override, strategies, split.n_splits,
evaluate.ks) and the pipeline's data/splits/ and data/embeddings/ (run `dvc repro` first), trains
every (strategy, variant) on every split exactly as the train stage does, without its checkpoint
store, and prints mean ± std over the splits of Recall@max(ks) under the sampled and the
full-ranking protocol, plus the per-split values as JSON with --json PATH. Variants:
--normalize sets train.normalize_sources; --seeding `same` gives every split the same seed, as
before training was seeded per split (the data splits themselves stay as they are);
--scale-source SOURCE=FACTOR multiplies one source's rows before anything else, to see what an
encoder with another output scale would do (raw CLIP image features have norm ~10, the offline
pixel-stats encoder and Sentence-BERT emit unit-norm rows).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from xreflect.core.config import load_params, strategy_sources
from xreflect.data.split import Split
from xreflect.evaluation.full_ranking import full_metrics
from xreflect.core.io import log_stderr, write_json
from xreflect.core.paths import embedding_path, split_paths
from xreflect.evaluation.report import split_metrics
from xreflect.training.baselines import popularity
from xreflect.training.config import train_config
from xreflect.training.features import l2_normalize, load_features
from xreflect.training.grid import train_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", required=True)
    parser.add_argument("--normalize", nargs="+", choices=["false", "true"], default=None,
                        help="values of train.normalize_sources to run (default: params.yaml's)")
    parser.add_argument("--seeding", nargs="+", choices=["per-split", "same"], default=["per-split"])
    parser.add_argument("--scale-source", default=None, metavar="SOURCE=FACTOR")
    parser.add_argument("--json", default=None, help="write every per-split value here")
    args = parser.parse_args(argv)
    params = load_params()
    config, _ = train_config(params)
    ks = [int(k) for k in (params.get("evaluate") or {}).get("ks", [1, 10])]
    metric = f"recall@{max(ks)}"
    splits = [Split.load(path) for path in split_paths(int(params["split"]["n_splits"]))]
    normalize = [v == "true" for v in args.normalize] if args.normalize else [config.normalize_sources]
    rows = []
    for strategy in args.strategies:
        sources = strategy_sources(params, strategy)
        for norm in normalize:
            run_config = dataclasses.replace(config, normalize_sources=norm)
            features = source_features(strategy, sources, norm, args.scale_source) if sources else None
            for seeding in args.seeding:
                start, values = time.perf_counter(), {"sampled": [], "full": []}
                for split in splits:
                    split = split if seeding == "per-split" else dataclasses.replace(split, seed=0)
                    if features is None:
                        result = popularity(split, full_k=max(ks))
                    else:
                        result = train_grid(split, features, run_config, log=lambda _: None, full_k=max(ks))
                    values["sampled"].append(split_metrics(split, result.test_scores, ks)[metric])
                    values["full"].append(full_metrics(split, "test", result.full_test_top, ks)[metric])
                row = {"strategy": strategy, "normalize_sources": norm, "seeding": seeding,
                       "scale_source": args.scale_source, "metric": metric,
                       **values, "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                log_stderr(f"{strategy} normalize_sources={norm} seeding={seeding}: " + ", ".join(
                    f"{p} {np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"
                    for p, v in values.items()) + f" ({row['seconds']} s)")
    if args.json:
        write_json(args.json, rows)


def source_features(strategy: str, sources: list[str], normalize: bool, scale: str | None) -> np.ndarray:
    """The strategy's item-tower input as the train stage builds it, one source optionally rescaled first."""
    scaled, _, factor = (scale or "").partition("=")
    parts = []
    for source in sources:
        array = load_features([embedding_path(strategy, source)])
        array = array * float(factor) if source == scaled else array
        parts.append(l2_normalize(array) if normalize else array)
    return np.concatenate(parts, axis=1)


if __name__ == "__main__":
    main()
