"""Item images for the dataset directory: fetch, store under content-hash names, apply the policy for
items without a usable image, and list those items.

`missing_image` (datasets.<name>.missing_image in params.yaml):
- `text-only` (default): keep the item with `image: null`; image prompts then see only its text;
- `drop`: remove the item (and so its interactions) before the k-core filter;
- `error`: stop, listing the items, so that a run never silently loses images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import pandas as pd

from xreflect.core.config import ParamsError
from xreflect.data.contract import IMAGES_DIR, MISSING_IMAGES_FILE, Item
from xreflect.data.sources.download import Settings, check_image, fetch_images
from xreflect.data.kcore import k_core, to_implicit
from xreflect.core.errors import DataError
from xreflect.core.io import write_text

POLICIES = ("text-only", "drop", "error")
MISSING_FILE = MISSING_IMAGES_FILE
EXTENSIONS = {"jpeg": "jpg", "mpo": "jpg"}


def missing_image_policy(name: str, entry: Mapping[str, Any]) -> str:
    policy = entry.get("missing_image", "text-only")
    if policy not in POLICIES:
        raise ParamsError(f"params.yaml: datasets.{name}.missing_image is {policy!r}; allowed values are "
                         f"{list(POLICIES)}")
    return policy


def core_items(interactions: pd.DataFrame, k: int) -> set[str]:
    """Items that can survive the filter stage's k-core: only these need an image fetched.
    (Dropping items only shrinks a k-core, so no other item can enter it later.)"""
    return set(k_core(to_implicit(interactions), k)["item_id"])


def store_image(cached: Path, images_dir: Path) -> str:
    """Copy a verified image to images/<content sha256>.<ext>; return its path relative to the
    dataset directory. Identical images (e.g. one poster for two ids) are stored once."""
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()[:32]
    kind = check_image(cached)
    name = f"{digest}.{EXTENSIONS.get(kind, kind)}"
    target = images_dir / name
    if not target.exists():
        images_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(name + ".part")
        shutil.copyfile(cached, partial)
        partial.replace(target)
    return f"{IMAGES_DIR}/{name}"


def attach_images(items: list[Item], candidates: Mapping[str, Sequence[str]], out_dir: Path,
                  cache_dir: Path, settings: Settings, policy: str, name: str,
                  digests: Mapping[str, str] | None = None,
                  no_url_reason: str = "no image URL") -> tuple[list[Item], dict]:
    """Fetch an image for each item in `candidates` (id -> URLs, best first; `digests`: URL ->
    pinned sha256), store it, and apply `policy` to the candidates without one. Items not in
    `candidates` keep `image: null`."""
    results = fetch_images(candidates, cache_dir, settings, digests)
    missing: list[tuple[str, str, str]] = []  # (item_id, url, reason)
    with_image: list[Item] = []
    for item in items:
        result = results.get(item.item_id)
        if result is None:
            with_image.append(item)
        elif result.path is not None:
            with_image.append(replace(item, image=store_image(result.path, out_dir / IMAGES_DIR)))
        else:
            urls = candidates[item.item_id]
            reason = "; ".join(result.errors) if result.errors else no_url_reason
            missing.append((item.item_id, urls[-1] if urls else "", reason))
            with_image.append(item)
    write_text(out_dir / MISSING_FILE, _missing_csv(missing))
    examples = [f"item {item_id}: {reason}" for item_id, _, reason in missing[:10]]
    if missing and policy == "error":
        raise DataError(
            f"{name}: {len(missing)} of {len(candidates)} items have no usable image, e.g. "
            + "; ".join(examples[:5]) + f". The full list is in {out_dir / MISSING_FILE}. Set "
            f"datasets.{name}.missing_image to 'text-only' (keep them without an image) or 'drop'.")
    dropped = {item_id for item_id, _, _ in missing} if policy == "drop" else set()
    kept = [item for item in with_image if item.item_id not in dropped]
    # Which host answered, so that a poster table's share can be told from the template's.
    hosts = Counter(urlparse(r.url).netloc or "local" for r in results.values() if r.path is not None)
    report = {"policy": policy, "attempted": len(candidates), "with_image": len(candidates) - len(missing),
              "with_image_by_host": dict(sorted(hosts.items())),
              "without_image": len(missing), "dropped": len(dropped), "missing_list": MISSING_FILE,
              "missing_examples": examples}
    return kept, report


def _missing_csv(missing: list[tuple[str, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item_id", "url", "reason"])
    writer.writerows(missing)
    return buffer.getvalue()
