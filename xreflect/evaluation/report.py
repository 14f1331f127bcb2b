"""Per-split metrics, their mean and spread over the splits, and the paper-style tables."""
from __future__ import annotations

import numpy as np

from xreflect.data.split import Split, candidates
from xreflect.paper.labels import LABELS
from xreflect.evaluation.metrics import topk_metrics


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


def report_markdown(results: dict, full_results: dict, strategies: list[str], ks: list[int],
                    baseline: str | None, title: str) -> str:
    """metrics/report.md: the paper-shaped tables under both protocols and the strategies' order."""
    at = lambda k: [f"{m}@{k}" for m in ("precision", "recall", "ndcg")]  # noqa: E731
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
    return "".join(report)
