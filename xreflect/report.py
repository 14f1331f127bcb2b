"""Per-split metrics, their mean and spread over the splits, and the paper-style tables."""
from __future__ import annotations

import numpy as np

from xreflect.data.split import Split, candidates
from xreflect.labels import LABELS
from xreflect.metrics import topk_metrics


def split_metrics(split: Split, test_scores: np.ndarray, ks: list[int]) -> dict[str, float]:
    test = candidates(split, "test")
    if test_scores.shape != test.items.shape:
        raise ValueError(f"test scores have shape {test_scores.shape} but the split's test candidates "
                         f"have {test.items.shape}; rerun the train stage for this strategy")
    return topk_metrics(test_scores, test.labels, test.mask, ks)


def aggregate(per_split: list[dict[str, float]]) -> dict[str, dict]:
    """Mean and sample standard deviation (ddof=1; 0 for a single split) of each metric."""
    out = {}
    for name in per_split[0]:
        values = np.array([m[name] for m in per_split])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"mean": float(values.mean()), "std": std, "per_split": values.tolist()}
    return out


# Under full ranking Item Popularity ranks each user's unseen items: no sampled candidates to name.
FULL_RANKING_LABELS = {"popularity": "Item Popularity (unseen items)"}


def markdown_table(results: dict[str, dict[str, dict]], metrics: list[str], baseline: str | None,
                   labels: dict[str, str] | None = None) -> str:
    """Rows of mean ± std like the paper's tables, the best mean in bold, and the relative gain
    against `baseline` for strategies that beat it. `labels` overrides row names of LABELS."""
    names = {**LABELS, **(labels or {})}
    header = "| Strategy | " + " | ".join(m.replace("precision", "Precision").replace("recall", "Recall")
                                         .replace("ndcg", "NDCG") for m in metrics) + " |"
    lines = [header, "|---" * (len(metrics) + 1) + "|"]
    best = {m: max(r[m]["mean"] for r in results.values() if m in r) for m in metrics}
    for strategy, result in results.items():
        cells = []
        for m in metrics:
            if m not in result:
                cells.append("–")
                continue
            mean, std = result[m]["mean"], result[m]["std"]
            cell = f"{mean:.4f} ± {std:.4f}"
            if mean == best[m]:
                cell = f"**{cell}**"
            if baseline in results and strategy != baseline and m in results[baseline]:
                base = results[baseline][m]["mean"]
                if base > 0 and mean > base:
                    cell += f" (+{100 * (mean - base) / base:.2f}%)"
            cells.append(cell)
        lines.append(f"| {names.get(strategy, strategy)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ordering(results: dict[str, dict[str, dict]], metric: str, strategies: list[str],
             labels: dict[str, str] | None = None) -> str:
    """`strategies` from the best mean `metric` to the worst, e.g. "Text + Image > Text = KAR"."""
    names = {**LABELS, **(labels or {})}
    ranked = sorted(strategies, key=lambda s: -results[s][metric]["mean"])
    out = names.get(ranked[0], ranked[0])
    for before, strategy in zip(ranked, ranked[1:]):
        tie = results[strategy][metric]["mean"] == results[before][metric]["mean"]
        out += f" {'=' if tie else '>'} {names.get(strategy, strategy)}"
    return out
