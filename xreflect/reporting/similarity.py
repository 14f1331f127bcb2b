"""The paper's Figure 3: how far each prompting strategy's responses move from the original text.

For every item, x = cosine(description, image description) is the reference similarity and
y = cosine(description, response) for each compared strategy. Points below the diagonal carry
information the description does not.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from xreflect.core.config import run_strategies
from xreflect.core.io import atomic_path, log_stderr, write_json
from xreflect.core.paths import FILTERED_DIR, embedding_path
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.paper.labels import LABELS


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def similarity_table(description: np.ndarray, reference: np.ndarray,
                     responses: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    table = {"reference": row_cosine(description, reference)}
    for name, emb in responses.items():
        table[name] = row_cosine(description, emb)
    return table


def summarize(table: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean similarity to the description, and the share of items whose response is further from
    the description than the image description is (below the diagonal)."""
    reference = table["reference"]
    out = {"reference": {"mean_similarity": float(reference.mean())}}
    for name, values in table.items():
        if name != "reference":
            out[name] = {"mean_similarity": float(values.mean()),
                         "share_below_diagonal": float((values < reference).mean())}
    return out


def scatter_png(table: dict[str, np.ndarray] | None, labels: dict[str, str], path, note: str | None = None) -> None:
    """One scatter per compared strategy; with no table, a figure that states `note` instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xreflect.core.io import atomic_path

    if table is None:
        fig = plt.figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, f"Figure 3 {note}", ha="center", va="center", wrap=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return
    names = [n for n in table if n != "reference"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.scatter(table["reference"], table[name], s=6, alpha=0.5)
        ax.plot([-1, 1], [-1, 1], color="grey", linewidth=0.8, linestyle="--")
        lo = float(min(table["reference"].min(), table[name].min())) - 0.05
        ax.set_xlim(lo, 1.0)
        ax.set_ylim(lo, 1.0)
        ax.set_title(labels.get(name, name))
        ax.set_xlabel("cos(description, image description)")
        ax.set_ylabel("cos(description, response)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def find_embeddings(sources: list[str], strategies: list[str]) -> dict[str, np.ndarray]:
    """Each source's embeddings from the first strategy that has them (identical in every one)."""
    found = {}
    for source in sources:
        path = next((embedding_path(s, source) for s in strategies if embedding_path(s, source).exists()), None)
        if path is not None:
            found[source] = np.load(path)
    return found


def write_figure3(params: dict) -> None:
    """The similarity stage: plots/similarity.csv and .png, metrics/similarity.json."""
    config = params.get("analyze") or {}
    reference, wanted = config.get("reference", "visual_only"), list(config.get("responses", []))
    emb = find_embeddings(["description", reference, *wanted], run_strategies(params))
    missing = [s for s in ["description", reference, *wanted] if s not in emb]
    if missing:
        log_stderr(f"similarity: no strategy in `run` embeds {missing}; Figure 3 leaves them out "
                   "(add a strategy that uses them to `run` in params.yaml)")
    compared = [s for s in wanted if s in emb]
    if "description" in missing or reference in missing or not compared:
        compared = []  # nothing to compare against: the outputs say so instead of a figure
    columns = ["item_id", "strategy", "reference_similarity", "response_similarity"]
    if compared:
        table = similarity_table(emb["description"], emb[reference], {s: emb[s] for s in compared})
        item_ids = [item.item_id for item in read_items(FILTERED_DIR / ITEMS_FILE)]
        rows = pd.concat([pd.DataFrame({"item_id": item_ids, "strategy": name,
                                        "reference_similarity": table["reference"],
                                        "response_similarity": table[name]}) for name in compared])
        summary = summarize(table)
    else:
        table, rows, summary = None, pd.DataFrame(columns=columns), {}
    with atomic_path("plots/similarity.csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.5f")
    scatter_png(table, LABELS, "plots/similarity.png",
                note=None if compared else f"not drawn: no strategy in `run` uses {missing}")
    write_json("metrics/similarity.json", {**summary, **({"left_out": missing} if missing else {})})
