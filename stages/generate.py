"""DVC stage `generate_<prompt>`: one prompt's responses for every item.

Reads data/filtered/items.jsonl, the images, parent responses (KAR factors; L_text/L_image for
cross-reflection separate) and params backbone, backbones, dataset, datasets, generate. Writes
data/responses/<prompt>.jsonl: {item_id, text, key, model, failed} per item, and
metrics/generate/<prompt>.json: tokens and cost of those responses (what this run spent goes to the log). Responses go through
the response cache (xreflect/cache.py), so a rerun or a resumed run asks only for what is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from xreflect.backends import create_backend
from xreflect.cache import ResponseCache
from xreflect.cli import run_stage
from xreflect.config import registry_entry, load_params, prompt_spec
from xreflect.cost import Prices, stage_budget
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.generate import RunReport, prompt_requests, run_requests, usage_metric
from xreflect.io import read_jsonl, write_json, write_jsonl
from xreflect.pipeline import DATASET_DIR, FILTERED_DIR, response_path
from xreflect.prompts import PROMPTS, parse_factor_list

METRICS_DIR = Path("metrics/generate")
# Released KAR knowledge (the paper used the KAR authors' texts for MovieLens-1M); the download
# stage writes it when datasets.<name>.kar_knowledge is configured.
KAR_KNOWLEDGE = DATASET_DIR / "kar_knowledge.jsonl"


def released_kar_knowledge(item_ids: list[str]) -> dict[str, str]:
    if not KAR_KNOWLEDGE.exists():
        return {}
    wanted = set(item_ids)
    return {r["item_id"]: r["knowledge"] for r in read_jsonl(KAR_KNOWLEDGE) if r["item_id"] in wanted}


def failed_items_notice(prompt_id: str, records: list[dict], settings: dict) -> str:
    """The tolerated failures are pending work: DVC sees the stage as up to date, so say how to retry."""
    failed = [r["item_id"] for r in records if r["failed"]]
    return (f"[{prompt_id}] PENDING: {len(failed)} of {len(records)} items failed (allowed by "
            f"generate.max_failures={settings.get('max_failures', 0.0)}) and use their description "
            f"instead of an answer, e.g. items {failed[:5]}; the reasons are in the response cache's "
            f"failure table. `dvc status` shows this stage as up to date: to retry only these items, run "
            f"`dvc repro -s -f generate_{prompt_id}` (cached answers are reused), then `dvc repro`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", required=True, help=f"one of {sorted(PROMPTS)}")
    prompt_id = parser.parse_args().prompt
    spec = prompt_spec(prompt_id)
    params = load_params()
    settings = params.get("generate") or {}
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    released = released_kar_knowledge([item.item_id for item in items]) if prompt_id == "kar" else {}
    if released:
        print(f"[kar] {len(released)} of {len(items)} items use the released KAR knowledge in "
              f"{KAR_KNOWLEDGE}; the backbone writes the rest", file=sys.stderr)
    requests = prompt_requests(prompt_id, params, [i for i in items if i.item_id not in released], DATASET_DIR)
    backbone_name, backbone = registry_entry(params, "backbone", "backbones")
    backend = create_backend(backbone_name, params.get("backbones") or {})
    prices = Prices.from_config(backbone)
    report = RunReport()
    cache = ResponseCache()
    try:
        budget = stage_budget(params, backend, requests, cache)
        max_failures = float(settings.get("max_failures", 0.0)) if spec.per_item else 0.0
        records = run_requests(requests, backend, cache, max_failures, label=prompt_id,
                               budget=budget, report=report)
        metric = usage_metric(requests, records, backend, cache, prices, report)
    finally:
        backend.close()
        cache.close()
    if released:
        by_item = {r["item_id"]: r for r in records}
        by_item.update({item_id: {"item_id": item_id, "text": text, "key": None, "model": "released",
                                  "failed": False} for item_id, text in released.items()})
        records = [by_item[item.item_id] for item in items]
    if not spec.per_item:  # asked once per dataset (KAR's factor list)
        records = [{**records[0], "factors": parse_factor_list(records[0]["text"])}]
    write_jsonl(response_path(prompt_id), records)
    # What this run did (cached vs generated, wall time) changes on every rerun: it goes to the log,
    # not into the metric, so `dvc metrics diff` shows only changes in what the outputs cost.
    print(f"[{prompt_id}] this run: {metric.pop('this_run')}", file=sys.stderr)
    if metric["failed"]:
        print(failed_items_notice(prompt_id, records, settings), file=sys.stderr)
    write_json(METRICS_DIR / f"{prompt_id}.json", metric)


if __name__ == "__main__":
    run_stage(main)
