"""The data contract every dataset source delivers to the pipeline.

A source (demo, movielens-1m, amazon-software) writes one directory, `data/dataset/`, holding:

- `items.jsonl`: one record per item: `item_id` (str), `title` (str), `description` (str, may be
  empty), `image` (path of the image file relative to the dataset directory, or null).
- `interactions.csv`: columns `user_id,item_id,rating,timestamp` (ids as strings; rating may be
  empty for sources that are implicit already; timestamp in seconds, may be empty).
- `images/`: the image files that `items.jsonl` refers to.
- `source.json`: what the source was and how it was obtained (free-form provenance).

Everything downstream (filter, split, generate, embed) reads only this contract.
"""
from __future__ import annotations

import mimetypes
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xreflect.core.errors import DataError
from xreflect.core.io import read_jsonl, write_jsonl

if TYPE_CHECKING:  # pandas loads only where interactions are read (0.2 s of every generate stage's start)
    import pandas as pd

ITEMS_FILE = "items.jsonl"
INTERACTIONS_FILE = "interactions.csv"
IMAGES_DIR = "images"
# Released KAR knowledge per item (optional; the paper used the KAR authors' texts for MovieLens-1M)
KAR_KNOWLEDGE_FILE = "kar_knowledge.jsonl"
MISSING_IMAGES_FILE = "missing_images.csv"  # item_id,url,reason of the items without an image
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    description: str
    image: str | None  # relative to the dataset directory

    def image_path(self, dataset_dir: str | Path) -> Path | None:
        return None if self.image is None else Path(dataset_dir) / self.image


def read_image(item: Item, dataset_dir: Path) -> tuple[bytes | None, str | None]:
    path = item.image_path(dataset_dir)
    if path is None:
        return None, None
    if not path.exists():
        raise DataError(f"item {item.item_id}: image file {path} is missing; rerun the "
                                "download stage (dvc repro download) to restore it")
    return path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png"


def write_items(path: str | Path, items: list[Item]) -> None:
    write_jsonl(path, (asdict(item) for item in items))


def read_items(path: str | Path) -> list[Item]:
    items = []
    for number, record in enumerate(read_jsonl(path), start=1):
        missing = {"item_id", "title", "description", "image"} - record.keys()
        if missing:
            raise DataError(f"{path}, record {number}: missing field(s) {sorted(missing)}; "
                             "every item needs item_id, title, description and image (null if none)")
        items.append(Item(str(record["item_id"]), record["title"] or "", record["description"] or "",
                          record["image"]))
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"{path}: duplicate item_id(s) {dupes}; each item must appear once")
    return items


def write_interactions(path: str | Path, frame: pd.DataFrame) -> None:
    from xreflect.core.io import atomic_path

    with atomic_path(path) as tmp:
        frame[INTERACTION_COLUMNS].to_csv(tmp, index=False)


def read_interactions(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    missing = set(INTERACTION_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected {INTERACTION_COLUMNS}")
    return frame
