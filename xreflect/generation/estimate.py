"""The dry run: `python -m xreflect.generation.estimate [--prompt P ...]` prints, for the current
params.yaml and before anything is spent, the calls, tokens and cost of generation per prompt and
both budgets. It sends nothing, and plans each prompt exactly as the generate stage does
(xreflect.generation.plan). Before the selected dataset is downloaded, it estimates from its known
item count (labelled ESTIMATE).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from xreflect.backends import create_backend
from xreflect.core.cli import run_stage
from xreflect.core.config import ParamsError, dataset_entry, load_params, registry_entry, run_strategies
from xreflect.core.io import read_json
from xreflect.core.paths import DATASET_DIR, FILTERED_DIR
from xreflect.data.contract import ITEMS_FILE, Item, read_items
from xreflect.generation.budget import Prices, estimate_prompt_tokens, ledger_scope, worst_case_cost
from xreflect.generation.cache import ResponseCache, request_key
from xreflect.generation.image_guard import MissingImages, items_without_image
from xreflect.generation.plan import plan_prompts
from xreflect.generation.requests import prompts_for
from xreflect.paper.prompts import PROMPTS
from xreflect.paper.strategies import strategy_sources


def prompts_in_use(params: Mapping[str, Any]) -> list[str]:
    """The prompts the pipeline generates for the strategies in `run`, parents before children."""

    order: list[str] = []
    for strategy in run_strategies(dict(params)):
        order += [p for p in prompts_for(strategy_sources(dict(params), strategy), params) if p not in order]
    return order


# What an item is assumed to be when the selected dataset is not filtered yet (the dry run says so).
ASSUMED_DESCRIPTION_CHARS = 600  # ~100 words of description
ASSUMED_IMAGE_PX = (500, 750)    # a poster-sized image: 2 tiles at high detail, 425 prompt tokens
DATA_REPORT = Path("metrics/data.json")  # written with data/filtered by the filter stage


@dataclass
class ItemSource:
    """The items a dry run estimates: the filtered items of the selected dataset, or (before its
    download) one stand-in item weighted by the dataset's known item count."""
    dataset: str
    count: int
    items: list
    weight: int      # how many items each per-item request stands for
    estimated: bool
    note: str


def dataset_items(params: Mapping[str, Any], scratch: Path) -> ItemSource:

    name, entry = dataset_entry(dict(params))
    filtered = FILTERED_DIR / ITEMS_FILE
    built_for = read_json(DATA_REPORT).get("dataset") if DATA_REPORT.exists() else None
    if filtered.exists() and built_for == name:
        items = read_items(filtered)
        return ItemSource(name, len(items), items, 1, False, f"the filtered items in {filtered}")
    known = (entry.get("paper_table1") or {}).get("items") or (entry.get("generator") or {}).get("n_items")
    why = f"{filtered} holds dataset {built_for!r}" if filtered.exists() and built_for else f"no {filtered} yet"
    if not known:
        raise ParamsError(f"dataset {name!r} is not filtered yet ({why}) and params.yaml gives no item count "
                          f"(datasets.{name}.paper_table1.items); run `dvc repro filter` first")

    (scratch / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", ASSUMED_IMAGE_PX, (128, 128, 128)).save(scratch / "images/stand-in.png")
    words = ("lorem ipsum dolor sit amet " * (ASSUMED_DESCRIPTION_CHARS // 27 + 1))[:ASSUMED_DESCRIPTION_CHARS]
    stand_in = Item("stand-in", "An Example Title (1999)", words, "images/stand-in.png")
    source = "paper_table1.items, before the 5-core" if (entry.get("paper_table1") or {}).get("items") \
        else "generator.n_items"
    return ItemSource(name, int(known), [stand_in], int(known), True,
                      f"ESTIMATE: not downloaded and filtered yet, {why}; the count is datasets.{name}.{source}; "
                      f"each item assumed to have a ~{ASSUMED_DESCRIPTION_CHARS}-character description and a "
                      f"{ASSUMED_IMAGE_PX[0]}x{ASSUMED_IMAGE_PX[1]} image")


def estimate(params: Mapping[str, Any], prompt_ids: list[str], cache, expected_output_tokens: int,
             source: ItemSource, dataset_dir: Path) -> list[dict]:
    """Per prompt: requests, cached, calls to make, estimated tokens, expected and worst-case cost.

    A chained prompt whose parents are not generated yet is estimated with a stand-in parent of
    `expected_output_tokens` (all its requests count as calls)."""

    name, backbone = registry_entry(dict(params), "backbone", "backbones")
    backend = create_backend(name, params.get("backbones") or {})  # loads no model, opens no connection
    prices = Prices.from_config(backbone)
    placeholder = "word " * expected_output_tokens
    rows = []
    for prompt_id in prompt_ids:
        row = {"prompt": prompt_id, "requests": 0, "cached": 0, "calls": 0, "prompt_tokens": 0,
               "completion_tokens": 0, "cost_usd": 0.0, "worst_case_usd": 0.0, "models": [], "unpriced": [],
               "without_image": len(items_without_image(prompt_id, source.items)), "blocked": None}
        try:  # the generate stage's own plan: the image guard, released KAR knowledge
            (plan,) = plan_prompts([prompt_id], params, source.items, dataset_dir)
        except MissingImages as err:
            row["blocked"] = str(err)
            rows.append(row)
            continue
        row["without_image"] = len(plan.without_image)
        requests = plan.requests(params, dataset_dir, placeholder=placeholder, fresh=source.estimated)
        weight = source.weight if PROMPTS[prompt_id].per_item else 1
        identities = [backend.identity(request) for request in requests]
        keys = [request_key(request, identity) for request, identity in zip(requests, identities)]
        cached = {} if source.estimated else cache.get_many(keys)
        row.update(requests=len(requests) * weight, cached=len(cached))
        for request, identity, key in zip(requests, identities, keys):
            if key in cached:
                continue
            prompt_tokens = estimate_prompt_tokens(request, identity.get("image_detail") or "auto")
            completion = min(expected_output_tokens, identity.get("max_tokens") or identity.get("max_new_tokens")
                             or expected_output_tokens)
            row["calls"] += weight
            row["prompt_tokens"] += prompt_tokens * weight
            row["completion_tokens"] += completion * weight
            row["cost_usd"] += prices.cost(identity.get("model"), prompt_tokens, completion) * weight
            row["worst_case_usd"] += worst_case_cost(request, identity, prices) * weight
        row["models"] = sorted({identity.get("model") for identity in identities})
        row["unpriced"] = [m for m in row["models"] if m not in prices.by_model]
        rows.append(row)
    backend.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Dry run: `python -m xreflect.generation.estimate [--prompt P ...]` prints what generation would cost now."""

    parser = argparse.ArgumentParser(description="Estimate calls, tokens and cost of generation "
                                     "for the current params.yaml; sends nothing.")
    parser.add_argument("--prompt", action="append", help="only these prompts (default: all in use)")
    parser.add_argument("--expected-output-tokens", type=int, default=None,
                        help="typical answer length (default: generate.expected_output_tokens or 300)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("--backbone", help="estimate for this backbone instead of params' `backbone`")
    parser.add_argument("--dataset", help="estimate for this dataset instead of params' `dataset`")
    args = parser.parse_args(argv)
    params = load_params()
    params["backbone"] = args.backbone or params.get("backbone")
    params["dataset"] = args.dataset or params.get("dataset")
    settings = params.get("generate") or {}
    expected = args.expected_output_tokens or int(settings.get("expected_output_tokens", 300))
    cache = ResponseCache()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = dataset_items(params, Path(scratch))
            rows = estimate(params, args.prompt or prompts_in_use(params), cache, expected, source,
                            Path(scratch) if source.estimated else DATASET_DIR)
        spent = cache.spent_usd(ledger_scope(params))
    finally:
        cache.close()
    name, backbone = registry_entry(params, "backbone", "backbones")
    per_stage, total = settings.get("budget_usd_per_prompt"), settings.get("budget_usd_total")
    if args.json:
        print(json.dumps({"dataset": source.dataset, "items": source.count, "estimate": source.estimated,
                          "backbone": name, "rows": rows, "budget_usd_per_prompt": per_stage,
                          "budget_usd_total": total, "spent_usd": spent}, indent=2))
        return
    for line in report_lines(source, name, backbone, rows, expected, per_stage, total, spent,
                             ledger_scope(params)):
        print(line)
    blocked = [r for r in rows if r["blocked"]]
    if blocked:
        raise SystemExit(f"{len(blocked)} image prompt(s) would send nothing: see BLOCKED above")


def report_lines(source: ItemSource, backbone_name: str, backbone: Mapping[str, Any], rows: list[dict],
                 expected: int, per_stage: float | None, total: float | None, spent: float,
                 scope: str) -> list[str]:
    """The dry run's table: the dataset and its item count first, both budgets last."""
    discount = float(backbone.get("batch_discount", 1.0))
    lines = [f"dataset {source.dataset}: {source.count:,} items ({source.note})",
             f"backbone {backbone_name}; answers assumed ~{expected} tokens; costs in USD",
             f"{'prompt':22} {'requests':>8} {'cached':>7} {'calls':>6} {'in tok':>10} {'out tok':>10} "
             f"{'expected':>9} {'worst':>9}"]
    for row in rows:
        flag = "  > per-stage budget" if per_stage is not None and row["worst_case_usd"] > float(per_stage) else ""
        flag += f"  no price: {row['unpriced']}" if row["unpriced"] and backbone.get("provider") == "openai" else ""
        flag = "  BLOCKED: too many items without an image" if row["blocked"] else flag
        lines.append(f"{row['prompt']:22} {row['requests']:8d} {row['cached']:7d} {row['calls']:6d} "
                     f"{row['prompt_tokens']:10d} {row['completion_tokens']:10d} {row['cost_usd']:9.4f} "
                     f"{row['worst_case_usd']:9.4f}{flag}")
    expected_usd, worst = sum(r["cost_usd"] for r in rows), sum(r["worst_case_usd"] for r in rows)
    lines.append(f"{'total':22} {sum(r['requests'] for r in rows):8d} {sum(r['cached'] for r in rows):7d} "
                 f"{sum(r['calls'] for r in rows):6d} {sum(r['prompt_tokens'] for r in rows):10d} "
                 f"{sum(r['completion_tokens'] for r in rows):10d} {expected_usd:9.4f} {worst:9.4f}")
    if discount != 1.0:
        lines.append(f"with the Batch API (x{discount}): expected {expected_usd * discount:.4f}, "
                     f"worst {worst * discount:.4f}")
    unpriced = sorted({m for r in rows for m in r["unpriced"]})
    if unpriced and backbone.get("provider") == "openai":
        lines.append(f"no price for {unpriced} under backbones.{backbone_name}.prices: counted as $0 above; "
                     "a budgeted run on a paid server refuses to start until a price is added")
    over = [r["prompt"] for r in rows if per_stage is not None and r["worst_case_usd"] > float(per_stage)]
    lines.append("budget per prompt stage (generate.budget_usd_per_prompt): "
                 + ("none" if per_stage is None else f"${float(per_stage):.2f}")
                 + (f"; at worst these stop before finishing: {over}" if over else ""))
    if total is None:
        lines.append(f"budget for the whole run (generate.budget_usd_total, {scope}): none; spent so far ${spent:.4f}")
    else:
        fits = spent + worst <= float(total)
        lines.append(f"budget for the whole run (generate.budget_usd_total, {scope}): ${float(total):.2f}; spent "
                     f"so far ${spent:.4f}; worst case of the rest ${worst:.4f}: "
                     + ("fits" if fits else f"does NOT fit, raise it to at least ${spent + worst:.2f}"))
    without = [r for r in rows if r["without_image"] and not r["blocked"]]
    if without:
        lines.append("answered by their description, no call (items without an image): "
                     + ", ".join(f"{r['prompt']} {r['without_image']}" for r in without))
    lines += [f"BLOCKED {r['blocked']}" for r in rows if r["blocked"]]
    return lines


if __name__ == "__main__":

    run_stage(main, "cost")
