"""The paper's Figure 3: how far each prompting strategy's responses move from the original text.

For every item, x = cosine(description, image description) is the reference similarity and
y = cosine(description, response) for each compared strategy. Points below the diagonal carry
information the description does not.
"""
from __future__ import annotations

import numpy as np


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

    from xreflect.io import atomic_path

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
