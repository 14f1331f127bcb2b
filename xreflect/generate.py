"""Run one prompt over every item through a backbone, with the response cache in front of it.

Cached answers are reused; only the misses reach the backbone, and each answer is stored the moment
it arrives, so an interrupted stage resumes where it stopped. Failed requests are recorded in the
cache's failure table and retried on the next run; the stage fails only when more than
`max_failures` (a fraction of the items) failed.
"""
from __future__ import annotations

import mimetypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from xreflect.backends.base import Backend, GenerationError, Request
from xreflect.cache import ResponseCache, request_key
from xreflect.data.contract import Item
from xreflect.prompts import PromptSpec


@dataclass(frozen=True)
class ParentText:
    """A value a chained prompt is built from: a response (with its cache key) or raw item text."""
    text: str
    key: str | None = None


class GenerationFailed(RuntimeError):
    pass


def read_image(item: Item, dataset_dir: Path) -> tuple[bytes | None, str | None]:
    path = item.image_path(dataset_dir)
    if path is None:
        return None, None
    if not path.exists():
        raise FileNotFoundError(f"item {item.item_id}: image file {path} is missing; rerun the "
                                "download stage (dvc repro download) to restore it")
    return path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png"


def build_requests(spec: PromptSpec, items: list[Item], dataset_dir: Path,
                   shared: Mapping[str, ParentText],
                   parents: Mapping[str, Mapping[str, ParentText]]) -> list[Request]:
    """One request per item. `shared` holds dataset-level fields (item_kind, KAR factors);
    `parents` maps a field name to each item's parent text (e.g. r_text -> {item_id: ...})."""
    requests = []
    for item in items:
        values = {"title": ParentText(item.title), "description": ParentText(item.description),
                  **shared, **{name: by_item[item.item_id] for name, by_item in parents.items()}}
        fields = {name: values[name].text for name in spec.fields}
        parent_keys = tuple(values[name].key for name in spec.fields if values[name].key)
        image, mime = read_image(item, dataset_dir) if spec.image else (None, None)
        requests.append(Request(spec.id, spec.version, spec.render(**fields), item.item_id, image, mime,
                                {**fields, "title": item.title, "description": item.description},
                                parent_keys))
    return requests


def run_requests(requests: list[Request], backend: Backend, cache: ResponseCache,
                 max_failures: float = 0.0, label: str = "") -> list[dict]:
    """Answer every request (cache first), returning one record per request in order:
    {item_id, text, key, model, failed}. A failed request under the allowed fraction falls back
    to the item's description so that downstream shapes stay fixed; the record says `failed`."""
    keys = [request_key(request, backend.identity(request)) for request in requests]
    cached = cache.get_many(keys)
    misses = [i for i, key in enumerate(keys) if key not in cached]
    print(f"[{label}] {len(requests)} requests: {len(requests) - len(misses)} cached, "
          f"{len(misses)} to generate with backbone {backend.name!r}", file=sys.stderr)
    errors: dict[int, str] = {}
    if misses:
        todo = [requests[i] for i in misses]
        with tqdm(total=len(todo), desc=label or "generate", unit="item", file=sys.stderr) as bar:
            for local_index, outcome in backend.generate(todo):
                index = misses[local_index]
                if isinstance(outcome, GenerationError):
                    errors[index] = str(outcome)
                    cache.record_failure(keys[index], requests[index], str(outcome))
                else:
                    cache.put(keys[index], requests[index], outcome)
                bar.update(1)
        cached.update(cache.get_many(keys[i] for i in misses if i not in errors))
    if len(errors) > max_failures * len(requests):
        sample = "; ".join(f"item {requests[i].item_id}: {msg}" for i, msg in list(errors.items())[:3])
        raise GenerationFailed(
            f"[{label}] {len(errors)} of {len(requests)} requests failed (allowed: "
            f"{max_failures:.0%}); finished answers are cached, rerun to retry the rest. First: {sample}")
    records = []
    for index, (request, key) in enumerate(zip(requests, keys)):
        if index in errors:
            records.append({"item_id": request.item_id, "text": request.fields.get("description", ""),
                            "key": key, "model": None, "failed": True})
        else:
            hit = cached[key]
            records.append({"item_id": request.item_id, "text": hit.text, "key": key,
                            "model": hit.model, "failed": False})
    return records
