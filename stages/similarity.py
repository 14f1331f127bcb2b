"""DVC stage `similarity`: the data and PNG of the paper's Figure 3.

Reads data/embeddings/ (each source from the first strategy, in `run` order, that embedded it) and
params analyze, run. Writes plots/similarity.csv (one row per item and compared strategy, for
`dvc plots`), plots/similarity.png and the metric metrics/similarity.json. A compared response that
no strategy in `run` uses is left out, and the log and the metric say so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from xreflect.cli import run_stage
from xreflect.config import load_params, run_strategies
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.io import atomic_path, log_stderr, write_json
from xreflect.pipeline import FILTERED_DIR, embedding_path
from xreflect.labels import LABELS
from xreflect.similarity import scatter_png, similarity_table, summarize


def find_embeddings(sources: list[str], strategies: list[str]) -> dict[str, np.ndarray]:
    """Each source's embeddings from the first strategy that has them (identical in every one)."""
    found = {}
    for source in sources:
        path = next((embedding_path(s, source) for s in strategies if embedding_path(s, source).exists()), None)
        if path is not None:
            found[source] = np.load(path)
    return found


def main() -> None:
    params = load_params()
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


if __name__ == "__main__":
    run_stage(main)
