"""From the data contract to the filtered, indexed interaction set and its report."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from xreflect.core.config import ParamsError, dataset_entry
from xreflect.core.io import atomic_path, log_stderr, read_json, write_json, write_npy
from xreflect.core.paths import DATA_REPORT, DATASET_DIR, FILTERED_DIR
from xreflect.data.contract import INTERACTIONS_FILE, ITEMS_FILE, Item, read_interactions, read_items, write_items
from xreflect.data.kcore import k_core, to_implicit
from xreflect.data.media_coverage import filtered_media


@dataclass(frozen=True)
class Filtered:
    items: list[Item]     # row i = item index i
    users: list[str]      # row u = user index u
    pairs: np.ndarray     # int32 [n, 2] (user index, item index), sorted


def counts(pairs: pd.DataFrame) -> dict[str, float]:
    n_users, n_items = pairs["user_id"].nunique(), pairs["item_id"].nunique()
    return {"interactions": int(len(pairs)), "users": int(n_users), "items": int(n_items),
            "density": float(len(pairs) / (n_users * n_items)) if n_users and n_items else 0.0}


def item_counts(items: list[Item]) -> dict[str, int]:
    with_text = sum(bool(item.description.strip()) for item in items)
    with_image = sum(item.image is not None for item in items)
    return {"items": len(items), "with_text": with_text, "without_text": len(items) - with_text,
            "with_image": with_image, "without_image": len(items) - with_image}


def filter_dataset(items: list[Item], interactions: pd.DataFrame, k: int) -> tuple[Filtered, dict]:
    """Implicit feedback, interactions on unknown items dropped, then the k-core; returns the
    indexed result and a report of the counts before and after."""
    known = {item.item_id for item in items}
    implicit = to_implicit(interactions)
    unknown = ~implicit["item_id"].isin(known)
    kept = k_core(implicit[~unknown], k)
    by_id = {item.item_id: item for item in items}
    item_ids = sorted(kept["item_id"].unique())
    user_ids = sorted(kept["user_id"].unique())
    item_index = {item_id: i for i, item_id in enumerate(item_ids)}
    user_index = {user_id: u for u, user_id in enumerate(user_ids)}
    pairs = np.column_stack([kept["user_id"].map(user_index).to_numpy(),
                             kept["item_id"].map(item_index).to_numpy()]).astype(np.int32)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    filtered_items = [by_id[item_id] for item_id in item_ids]
    report = {
        "raw": {"ratings": int(len(interactions)), **counts(implicit)},
        "interactions_on_unknown_items": int(unknown.sum()),
        "filtered": counts(kept),
        "min_interactions": k,
        "items_with_text": sum(bool(item.description.strip()) for item in filtered_items),
        "items_with_image": sum(item.image is not None for item in filtered_items),
        "items_without_text": sum(not item.description.strip() for item in filtered_items),
        "items_without_image": sum(item.image is None for item in filtered_items),
        "catalog": item_counts(items),  # every item the source delivered, before filtering
    }
    return Filtered(filtered_items, user_ids, pairs), report


def write_filtered(params: dict) -> None:
    """The filter stage: data/filtered/ (items.jsonl, users.csv, pairs.npy) and metrics/data.json."""
    name, entry = dataset_entry(params)
    items = read_items(DATASET_DIR / ITEMS_FILE)
    interactions = read_interactions(DATASET_DIR / INTERACTIONS_FILE)
    filtered, report = filter_dataset(items, interactions, int(entry.get("min_interactions", 5)))
    if len(filtered.pairs) == 0:
        raise ParamsError(f"filter: no interactions left after the {report['min_interactions']}-core of "
                         f"dataset {name!r}; lower datasets.{name}.min_interactions")
    write_items(FILTERED_DIR / ITEMS_FILE, filtered.items)
    with atomic_path(FILTERED_DIR / "users.csv") as tmp:
        pd.DataFrame({"user_id": filtered.users}).to_csv(tmp, index=False)
    write_npy(FILTERED_DIR / "pairs.npy", filtered.pairs)
    source = DATASET_DIR / "source.json"
    # paper_table1: the paper's Table 1 figures for this dataset, shown next to what the filter kept.
    write_json(DATA_REPORT, {"dataset": name, **report, "paper_table1": entry.get("paper_table1"),
                        "media": filtered_media(DATASET_DIR, filtered.items),
                        "source": read_json(source) if source.exists() else None})
    log_stderr(f"filter: {report['filtered']}")
