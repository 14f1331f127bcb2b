"""DVC stage `similarity`: the data and PNG of the paper's Figure 3.

Reads data/embeddings/ and params analyze. Writes plots/similarity.csv (one row per item and
compared strategy, for `dvc plots`), plots/similarity.png and the metric metrics/similarity.json.
"""
from __future__ import annotations

import sys
from pathlib import Path


import numpy as np
import pandas as pd

from xreflect.cli import run_stage
from xreflect.config import load_params
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.io import atomic_path, write_json
from xreflect.pipeline import FILTERED_DIR, check_declared_deps, embedding_path
from xreflect.report import LABELS
from xreflect.similarity import scatter_png, similarity_table, summarize


def main() -> None:
    config = load_params().get("analyze") or {}
    reference, compared = config.get("reference", "visual_only"), list(config.get("responses", []))
    sources = ["description", reference, *compared]
    check_declared_deps("similarity", [embedding_path(s) for s in sources])
    emb = {s: np.load(embedding_path(s)) for s in sources}
    table = similarity_table(emb["description"], emb[reference], {s: emb[s] for s in compared})
    item_ids = [item.item_id for item in read_items(FILTERED_DIR / ITEMS_FILE)]
    rows = pd.concat([pd.DataFrame({"item_id": item_ids, "strategy": name,
                                    "reference_similarity": table["reference"],
                                    "response_similarity": table[name]}) for name in compared])
    with atomic_path("plots/similarity.csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.5f")
    scatter_png(table, LABELS, "plots/similarity.png")
    write_json("metrics/similarity.json", summarize(table))


if __name__ == "__main__":
    run_stage(main)
