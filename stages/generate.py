"""DVC stage `generate_<prompt>`: one prompt's responses for every item.

Reads data/filtered/items.jsonl, the images, parent responses (KAR factors; L_text/L_image for
cross-reflection separate) and params backbone, backbones, dataset, datasets, generate. Writes
data/responses/<prompt>.jsonl: {item_id, text, key, model, failed} per item. Responses go through
the response cache (xreflect/cache.py), so a rerun or a resumed run asks only for what is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xreflect.backends import Request, create_backend  # noqa: E402
from xreflect.cache import ResponseCache  # noqa: E402
from xreflect.config import ParamsError, dataset_entry, load_params, prompt_spec  # noqa: E402
from xreflect.data.contract import ITEMS_FILE, read_items  # noqa: E402
from xreflect.generate import ParentText, build_requests, run_requests  # noqa: E402
from xreflect.io import read_jsonl, write_jsonl  # noqa: E402
from xreflect.pipeline import DATASET_DIR, FILTERED_DIR, check_declared_deps, response_path  # noqa: E402
from xreflect.prompts import PROMPTS, parse_factor_list  # noqa: E402


def parent_texts(source: str) -> dict[str, ParentText]:
    return {r["item_id"]: ParentText(r["text"], r["key"]) for r in read_jsonl(response_path(source))}


def inputs_of(prompt_id: str, params: dict, items) -> tuple[dict, dict]:
    """Dataset-level fields and per-item parent responses that `prompt_id` is built from."""
    _, dataset = dataset_entry(params)
    shared = {"item_kind": ParentText(str(dataset.get("item_kind", "an item")))}
    parents: dict[str, dict[str, ParentText]] = {}
    if prompt_id == "kar":
        (factors,) = read_jsonl(response_path("kar_factors"))
        shared["factors"] = ParentText(factors["factors"], factors["key"])
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        chosen = (params.get("generate") or {}).get("separate_inputs") or {}
        for field in ("r_text", "r_image"):
            source = chosen.get(field)
            if source == "description" and field == "r_text":
                parents[field] = {item.item_id: ParentText(item.description) for item in items}
            elif source in PROMPTS and PROMPTS[source].per_item:
                parents[field] = parent_texts(source)
            else:
                raise ParamsError(f"params.yaml: generate.separate_inputs.{field}={source!r}; allowed "
                                  f"values are per-item prompt ids {sorted(p for p in PROMPTS if PROMPTS[p].per_item)}"
                                  + (" or 'description'" if field == "r_text" else ""))
            if source != "description":
                check_declared_deps(f"generate_{prompt_id}", [response_path(source)])
    return shared, parents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", required=True, help=f"one of {sorted(PROMPTS)}")
    prompt_id = parser.parse_args().prompt
    spec = prompt_spec(prompt_id)
    params = load_params()
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    shared, parents = inputs_of(prompt_id, params, items)
    backend = create_backend(params.get("backbone"), params.get("backbones") or {})
    cache = ResponseCache()
    max_failures = float((params.get("generate") or {}).get("max_failures", 0.0))
    try:
        if spec.per_item:
            requests = build_requests(spec, items, DATASET_DIR, shared, parents)
            records = run_requests(requests, backend, cache, max_failures, label=prompt_id)
        else:  # asked once per dataset (KAR's factor list)
            fields = {name: shared[name].text for name in spec.fields}
            request = Request(spec.id, spec.version, spec.render(**fields), None, fields=fields)
            (record,) = run_requests([request], backend, cache, 0.0, label=prompt_id)
            records = [{**record, "factors": parse_factor_list(record["text"])}]
    finally:
        backend.close()
        cache.close()
    write_jsonl(response_path(prompt_id), records)


if __name__ == "__main__":
    main()
