"""DVC stage `filter`: implicit feedback and the k-core (users and items with >= k interactions).

Reads data/dataset/ and params dataset, datasets. Writes data/filtered/ (items.jsonl with row i =
item index i, users.csv with row u = user index u, pairs.npy int32 [n, 2]) and the metric
metrics/data.json.
"""
from __future__ import annotations

import sys
from pathlib import Path


import pandas as pd

from xreflect.cli import run_stage
from xreflect.config import dataset_entry, load_params
from xreflect.data.contract import INTERACTIONS_FILE, ITEMS_FILE, read_interactions, read_items, write_items
from xreflect.data.filtering import filter_dataset
from xreflect.data.media_report import filtered_media
from xreflect.io import atomic_path, read_json, write_json, write_npy

DATASET, OUT, REPORT = Path("data/dataset"), Path("data/filtered"), Path("metrics/data.json")


def main() -> None:
    params = load_params()
    name, entry = dataset_entry(params)
    items = read_items(DATASET / ITEMS_FILE)
    interactions = read_interactions(DATASET / INTERACTIONS_FILE)
    filtered, report = filter_dataset(items, interactions, int(entry.get("min_interactions", 5)))
    if len(filtered.pairs) == 0:
        raise SystemExit(f"filter: no interactions left after the {report['min_interactions']}-core of "
                         f"dataset {name!r}; lower datasets.{name}.min_interactions")
    write_items(OUT / ITEMS_FILE, filtered.items)
    with atomic_path(OUT / "users.csv") as tmp:
        pd.DataFrame({"user_id": filtered.users}).to_csv(tmp, index=False)
    write_npy(OUT / "pairs.npy", filtered.pairs)
    source = DATASET / "source.json"
    # paper_table1: the paper's Table 1 figures for this dataset, shown next to what the filter kept.
    write_json(REPORT, {"dataset": name, **report, "paper_table1": entry.get("paper_table1"),
                        "media": filtered_media(DATASET, filtered.items),
                        "source": read_json(source) if source.exists() else None})
    print(f"filter: {report['filtered']}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
