"""DVC stage `generate@<strategy>`: the responses of every prompt a strategy's sources need.

Reads data/filtered/items.jsonl, the images, and params backbone, backbones, dataset, datasets,
generate, strategies.<strategy>. For each prompt the strategy uses, parents first (KAR factors
before KAR; L_text and L_image before cross-reflection separate), writes
data/responses/<strategy>/<prompt>.jsonl: {item_id, text, key, model, failed} per item, and
metrics/generate/<strategy>.json: tokens and cost of those responses per prompt (what this run
spent goes to the log). Responses go through the response cache (xreflect/cache.py), shared by
every strategy: a prompt that two strategies use is paid for once, and a rerun or a resumed run
asks only for what is missing. A strategy without prompts (Text, Text + Image) writes an empty
directory.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from xreflect.backends import create_backend
from xreflect.cache import ResponseCache
from xreflect.cli import run_stage
from xreflect.config import load_params, registry_entry
from xreflect.strategies import strategy_sources
from xreflect.cost import Prices, stage_budget
from xreflect.data.contract import ITEMS_FILE, Item, read_items
from xreflect.generate import RunReport, no_image_records, prompt_requests, prompts_for, run_requests, usage_metric
from xreflect.image_guard import MissingImages, check_image_coverage, items_without_image
from xreflect.io import log_stderr, read_jsonl, write_json, write_jsonl
from xreflect.pipeline import DATASET_DIR, FILTERED_DIR, RESPONSES_DIR
from xreflect.prompts import PROMPTS, parse_factor_list
from xreflect.validate import validate_params

METRICS_DIR = Path("metrics/generate")
# Released KAR knowledge (the paper used the KAR authors' texts for MovieLens-1M); the download
# stage writes it when datasets.<name>.kar_knowledge is configured.
KAR_KNOWLEDGE = DATASET_DIR / "kar_knowledge.jsonl"


def released_kar_knowledge(item_ids: list[str]) -> dict[str, str]:
    if not KAR_KNOWLEDGE.exists():
        return {}
    wanted = set(item_ids)
    return {r["item_id"]: r["knowledge"] for r in read_jsonl(KAR_KNOWLEDGE) if r["item_id"] in wanted}


def failed_items_notice(strategy: str, prompt_id: str, records: list[dict], settings: dict) -> str:
    """The tolerated failures are pending work: DVC sees the stage as up to date, so say how to retry."""
    failed = [r["item_id"] for r in records if r["failed"]]
    return (f"[{prompt_id}] PENDING: {len(failed)} of {len(records)} items failed (allowed by "
            f"generate.max_failures={settings.get('max_failures', 0.0)}) and use their description "
            f"instead of an answer, e.g. items {failed[:5]}; the reasons are in the response cache's "
            f"failure table. `dvc status` shows this stage as up to date: to retry only these items, run "
            f"`dvc repro -s -f generate@{strategy}` (cached answers are reused), then `dvc repro`.")


def generate_prompt(strategy: str, prompt_id: str, params: dict, items: list[Item], out_dir: Path, backend,
                    cache, prices: Prices) -> dict:
    """Answer one prompt for every item into out_dir/<prompt>.jsonl; return its usage metric."""
    settings = params.get("generate") or {}
    released = released_kar_knowledge([item.item_id for item in items]) if prompt_id == "kar" else {}
    if released:
        log_stderr(f"[kar] {len(released)} of {len(items)} items use the released KAR knowledge in "
                   f"{KAR_KNOWLEDGE}; the backbone writes the rest")
    requests = prompt_requests(prompt_id, params, [i for i in items if i.item_id not in released],
                               DATASET_DIR, responses_dir=out_dir)
    without_image = items_without_image(prompt_id, items)
    if without_image:
        log_stderr(f"[{prompt_id}] {len(without_image)} of {len(items)} items have no image: no request for them, "
                   f"their description is their response ({', '.join(without_image[:10])}"
                   f"{', ...' if len(without_image) > 10 else ''})")
    budget = stage_budget(params, backend, requests, cache)
    report = RunReport()
    max_failures = float(settings.get("max_failures", 0.0)) if PROMPTS[prompt_id].per_item else 0.0
    records = run_requests(requests, backend, cache, max_failures, label=prompt_id, budget=budget, report=report)
    metric = usage_metric(requests, records, backend, cache, prices, report)
    if released or without_image:
        by_item = {r["item_id"]: r for r in records}
        by_item.update({item_id: {"item_id": item_id, "text": text, "key": None, "model": "released",
                                  "failed": False} for item_id, text in released.items()})
        by_item.update({r["item_id"]: r for r in no_image_records(items, without_image)})
        records = [by_item[item.item_id] for item in items]
    metric["items_without_image"] = len(without_image)
    if not PROMPTS[prompt_id].per_item:  # asked once per dataset (KAR's factor list)
        records = [{**records[0], "factors": parse_factor_list(records[0]["text"])}]
    write_jsonl(out_dir / f"{prompt_id}.jsonl", records)
    # What this run did (cached vs generated, wall time) changes on every rerun: it goes to the log,
    # not into the metric, so `dvc metrics diff` shows only changes in what the outputs cost.
    log_stderr(f"[{prompt_id}] this run: {metric.pop('this_run')}")
    if metric["failed"]:
        log_stderr(failed_items_notice(strategy, prompt_id, records, settings))
    return metric


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    strategy = parser.parse_args(argv).strategy
    params = load_params()
    validate_params(params)  # every -S typo fails here, before any request is sent or paid for
    prompts = prompts_for(strategy_sources(params, strategy), params)
    out_dir = RESPONSES_DIR / strategy
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}
    if prompts:
        log_stderr(f"generate {strategy}: prompts {prompts}")
        items = read_items(FILTERED_DIR / ITEMS_FILE)
        # The image guard, before any backbone exists: too many items without an image stop the
        # stage before a single request; the few allowed are answered by their description.
        try:
            for prompt_id in prompts:
                check_image_coverage(prompt_id, items, params)
        except MissingImages as err:
            raise SystemExit(str(err)) from None
        backbone_name, backbone = registry_entry(params, "backbone", "backbones")
        backend = create_backend(backbone_name, params.get("backbones") or {})
        cache = ResponseCache()
        try:
            for prompt_id in prompts:
                metrics[prompt_id] = generate_prompt(strategy, prompt_id, params, items, out_dir, backend,
                                                     cache, Prices.from_config(backbone))
        finally:
            backend.close()
            cache.close()
    else:
        log_stderr(f"generate {strategy}: the strategy uses no prompt; nothing to generate")
    write_json(METRICS_DIR / f"{strategy}.json", metrics)


if __name__ == "__main__":
    run_stage(main)
