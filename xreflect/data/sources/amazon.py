"""Amazon-Software source: Amazon Review Data (2018), Software category (Ni, Li and McAuley 2019).

Reads `datasets.amazon-software` in params.yaml and writes the data contract into `out_dir`; raw
downloads live in `data/raw/<name>/`.

Files (gzipped JSON lines, one object per line):
- reviews (`Software.json.gz`): `reviewerID`, `asin`, `overall` (1-5), `unixReviewTime`, ...
- metadata (`meta_Software.json.gz`): `asin`, `title`, `description` (a list of strings, often
  HTML), `imageURL` / `imageURLHighRes` (lists, often missing or empty), ... An asin can appear on
  more than one line; the first one is used.
"""
from __future__ import annotations

import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from xreflect.core.config import ParamsError
from xreflect.data.sources.archives import DAMAGED, damaged_archive
from xreflect.data.contract import INTERACTIONS_FILE, ITEMS_FILE, Item, write_interactions, write_items
from xreflect.data.sources.descriptions import clean_html
from xreflect.data.sources.download import Fetched, Settings, fetch_file, raw_dir_for
from xreflect.data.sources.images import attach_images, core_items, missing_image_policy
from xreflect.core.errors import DataError
from xreflect.core.io import write_json


@dataclass(frozen=True)
class Product:
    asin: str
    title: str
    description: str
    image_urls: list[str]   # imageURLHighRes first, then imageURL; the first usable one is kept


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each line of a gzipped JSON-lines file; a bad line raises an error
    naming the file, line number and content."""
    try:
        yield from _json_lines(path)
    except DAMAGED as error:
        raise damaged_archive(path, error) from error


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}): {line[:200]!r}; "
                                 "the download may be damaged: delete the file and rerun") from err
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object: {line[:200]!r}")
            yield number, record


def read_reviews(path: Path) -> pd.DataFrame:
    rows = []
    for number, record in json_lines(path):
        missing = [k for k in ("reviewerID", "asin", "overall") if record.get(k) in (None, "")]
        if missing:
            raise DataError(f"{path}, line {number}: missing {missing}: {json.dumps(record)[:200]!r}")
        rows.append((str(record["reviewerID"]), str(record["asin"]), float(record["overall"]),
                     record.get("unixReviewTime")))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    return frame


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value]) if v]


def image_urls(record: dict) -> list[str]:
    """Candidate image URLs, best first: high resolution, then the (often thumbnail) imageURL."""
    urls = _strings(record.get("imageURLHighRes")) + _strings(record.get("imageURL"))
    return list(dict.fromkeys(u.strip() for u in urls if u.strip().startswith(("http://", "https://"))))


def read_metadata(path: Path) -> dict[str, Product]:
    products: dict[str, Product] = {}
    for number, record in json_lines(path):
        asin = str(record.get("asin") or "").strip()
        if not asin:
            raise DataError(f"{path}, line {number}: no asin: {json.dumps(record)[:200]!r}")
        if asin in products:
            continue
        description = " ".join(clean_html(part) for part in _strings(record.get("description")))
        products[asin] = Product(asin, clean_html(str(record.get("title") or "")),
                                 " ".join(description.split()), image_urls(record))
    return products


def _fetch(name: str, entry: dict, key: str, raw: Path, settings: Settings) -> Fetched:
    config = entry.get(key) or {}
    urls = config.get("urls") or []
    if not urls:
        raise ParamsError(f"params.yaml: datasets.{name}.{key}.urls must list the file's URL(s)")
    file_name = Path(urls[0].split("?")[0]).name
    return fetch_file(urls, raw / file_name, settings, sha256=config.get("sha256"), md5=config.get("md5"))


def prepare(out_dir: Path, name: str, entry: dict[str, Any], params: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    settings = Settings.from_entry(name, entry)
    policy = missing_image_policy(name, entry)
    raw = raw_dir_for(out_dir, name)
    reviews_file = _fetch(name, entry, "reviews", raw, settings)
    metadata_file = _fetch(name, entry, "metadata", raw, settings)
    reviews = read_reviews(reviews_file.path)
    products = read_metadata(metadata_file.path)
    print(f"{name}: {len(reviews):,} reviews, {reviews['user_id'].nunique():,} users, "
          f"{reviews['item_id'].nunique():,} items reviewed; {len(products):,} products with metadata",
          file=sys.stderr)

    # Items are the products with metadata (title, description, images); reviews of other asins
    # are dropped by the filter stage, which reports how many.
    items = [Item(p.asin, p.title, p.description, None) for p in products.values()]
    known = reviews[reviews["item_id"].isin(products)]
    wanted = core_items(known, int(entry.get("min_interactions", 5)))
    candidates = {asin: products[asin].image_urls for asin in products if asin in wanted}
    items, image_report = attach_images(items, candidates, out_dir, raw / "images", settings, policy, name)

    write_items(out_dir / ITEMS_FILE, items)
    write_interactions(out_dir / INTERACTIONS_FILE, reviews)
    write_json(out_dir / "source.json", {
        "source": "amazon-software",
        "reviews": reviews_file.provenance(),
        "metadata": metadata_file.provenance(),
        "raw": {"reviews": len(reviews), "reviewers": int(reviews["user_id"].nunique()),
                "reviewed_items": int(reviews["item_id"].nunique()), "products_in_metadata": len(products),
                "reviews_without_metadata": int(len(reviews) - len(known))},
        "descriptions": {"used": "metadata description (HTML cleaned to text)",
                         "empty": sum(not p.description for p in products.values())},
        "images": {"order": "imageURLHighRes, then imageURL", **image_report},
    })
