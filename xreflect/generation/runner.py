"""Generation: run each prompt a strategy needs through a backbone, with the response cache in front.

Cached answers are reused; only the misses reach the backbone, and each answer is stored the moment
it arrives, so an interrupted stage resumes where it stopped. Failed requests are recorded in the
cache's failure table and retried on the next run; the stage fails only when more than
`max_failures` (a fraction of the items) failed. `generate_strategy` is the generate stage.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from xreflect.backends import create_backend
from xreflect.backends.base import Backend, GenerationError, NotSent, Request
from xreflect.core.config import registry_entry
from xreflect.core.errors import EXIT_FAILURES, StopRun
from xreflect.core.io import log_stderr, write_json, write_jsonl
from xreflect.core.paths import DATASET_DIR, FILTERED_DIR, RESPONSES_DIR
from xreflect.data.contract import ITEMS_FILE, Item, read_items
from xreflect.generation.budget import Budget, BudgetExhausted, Prices, stage_budget, summarize_usage, worst_case_cost
from xreflect.generation.cache import ResponseCache, request_key
from xreflect.generation.plan import PromptPlan, plan_prompts
from xreflect.generation.requests import prompts_for
from xreflect.generation.throughput import Throughput
from xreflect.paper.prompts import PROMPTS, parse_factor_list
from xreflect.paper.strategies import strategy_sources

USAGE_METRICS_DIR = Path("metrics/generate")


class GenerationFailed(StopRun):
    """More items failed than generate.max_failures allows."""
    exit_code = EXIT_FAILURES


@dataclass
class RunReport:
    """What one run of `run_requests` did; the stage writes it into its usage metric."""
    requests: int = 0
    cached: int = 0
    generated: int = 0
    failed: int = 0
    new_cost_usd: float = 0.0   # actual cost of the answers received in this run
    wall_s: float = 0.0
    backend_stats: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)  # requests/s and tokens/s of the answers received


def _generate_into_cache(indices: list[int], requests: list[Request], keys: list[str],
                         backend: Backend, cache: ResponseCache, budget: Budget | None,
                         report: RunReport, errors: dict[int, str], bar: tqdm,
                         meter: Throughput) -> None:
    """Send `requests[indices]` to the backend, storing each answer (or failure) as it arrives."""
    todo = [requests[i] for i in indices]
    for local_index, outcome in backend.generate(todo):
        index = indices[local_index]
        if isinstance(outcome, GenerationError):
            errors[index] = str(outcome)
            if isinstance(outcome, NotSent):  # never sent: nothing failed, nothing to record or count
                continue
            cache.record_failure(keys[index], requests[index], str(outcome))
        else:
            cache.put(keys[index], requests[index], outcome)
            report.generated += 1
            meter.add(outcome.usage, outcome.latency_s)
            bar.set_postfix_str(meter.summary(), refresh=False)
            if budget is not None:
                cost = budget.charge(backend.identity(requests[index]).get("model"), outcome.usage)
                report.new_cost_usd += cost
                if budget.scope and cost:
                    cache.record_spend(budget.scope, requests[index].template_id, cost)
        bar.update(1)


def run_requests(requests: list[Request], backend: Backend, cache: ResponseCache,
                 max_failures: float = 0.0, label: str = "", budget: Budget | None = None,
                 report: RunReport | None = None) -> list[dict]:
    """Answer every request (cache first), returning one record per request in order:
    {item_id, text, key, model, failed}. A failed request under the allowed fraction falls back
    to the item's description so that downstream shapes stay fixed; the record says `failed`.

    With a `budget`, misses go to the backend in slices that fit under it at their worst case
    (see xreflect.generation.budget); when not even the next request fits, BudgetExhausted stops the run, the
    answers received so far staying in the cache. `report`, if given, is filled in."""
    started = time.monotonic()
    report = report if report is not None else RunReport()
    keys = [request_key(request, backend.identity(request)) for request in requests]
    cached = cache.get_many(keys)
    misses = [i for i, key in enumerate(keys) if key not in cached]
    report.requests, report.cached = len(requests), len(requests) - len(misses)
    print(f"[{label}] {len(requests)} requests: {len(requests) - len(misses)} cached, "
          f"{len(misses)} to generate with backbone {backend.name!r}", file=sys.stderr)
    errors: dict[int, str] = {}
    if misses:
        worst = ([worst_case_cost(requests[i], backend.identity(requests[i]), budget.prices) for i in misses]
                 if budget is not None else [0.0] * len(misses))
        pending = list(range(len(misses)))
        meter = Throughput()
        with tqdm(total=len(misses), desc=label or "generate", unit="item", file=sys.stderr) as bar:
            while pending:
                count = budget.affordable(worst[p] for p in pending) if budget is not None else len(pending)
                if count == 0:
                    raise BudgetExhausted(
                        f"[{label}] budget reached: {budget.reached()}. {report.generated} new answers "
                        f"are cached; {len(pending)} requests not sent (up to "
                        f"${sum(worst[p] for p in pending):.4f} more). Check `python -m xreflect.generation.estimate`, "
                        "raise that budget in params.yaml and rerun.")
                chunk, pending = pending[:count], pending[count:]
                _generate_into_cache([misses[p] for p in chunk], requests, keys, backend, cache,
                                     budget, report, errors, bar, meter)
        report.throughput = meter.rates()
        cached.update(cache.get_many(keys[i] for i in misses if i not in errors))
    report.failed = len(errors)
    report.wall_s = round(time.monotonic() - started, 3)
    report.backend_stats = dict(getattr(backend, "stats", {}) or {})
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


def usage_metric(requests: list[Request], records: list[dict], backend: Backend,
                 cache: ResponseCache, prices: Prices, report: RunReport) -> dict:
    """The stage's DVC metric: tokens and cost of every response the outputs use (stable across
    reruns, whoever paid for them), and what this run itself did and spent."""
    answered = [(request, record) for request, record in zip(requests, records) if not record["failed"]]
    hits = cache.get_many(record["key"] for _, record in answered)
    totals = summarize_usage((backend.identity(request).get("model") for request, _ in answered),
                             (hits[record["key"]].usage for _, record in answered), prices)
    stats = report.backend_stats
    return {"backbone": backend.name, **backend.metric_fields(), "responses": len(answered),
            "failed": report.failed, **totals,
            "this_run": {"cached": report.cached, "generated": report.generated,
                         "cost_usd": round(report.new_cost_usd, 6), "wall_s": report.wall_s,
                         "requests_sent": stats.get("requests_sent", 0), "retries": stats.get("retries", 0),
                         **report.throughput}}


def no_image_records(items: list[Item], item_ids: list[str]) -> list[dict]:
    """The responses of an image prompt for items without an image: their own description, no call."""
    wanted = set(item_ids)
    return [{"item_id": item.item_id, "text": item.description, "key": None, "model": None, "failed": False,
             "no_image": True} for item in items if item.item_id in wanted]


def failed_items_notice(strategy: str, prompt_id: str, records: list[dict], settings: Mapping) -> str:
    """The tolerated failures are pending work: DVC sees the stage as up to date, so say how to retry."""
    failed = [r["item_id"] for r in records if r["failed"]]
    return (f"[{prompt_id}] PENDING: {len(failed)} of {len(records)} items failed (allowed by "
            f"generate.max_failures={settings.get('max_failures', 0.0)}) and use their description "
            f"instead of an answer, e.g. items {failed[:5]}; the reasons are in the response cache's "
            f"failure table. `dvc status` shows this stage as up to date: to retry only these items, run "
            f"`dvc repro -s -f generate@{strategy}` (cached answers are reused), then `dvc repro`.")


def generate_prompt(strategy: str, plan: PromptPlan, params: Mapping, items: list[Item], out_dir: Path,
                    backend: Backend, cache: ResponseCache, prices: Prices) -> dict:
    """Answer one prompt for every item into out_dir/<prompt>.jsonl; return its usage metric."""
    prompt_id, settings = plan.prompt_id, params.get("generate") or {}
    if plan.released:
        log_stderr(f"[kar] {len(plan.released)} of {len(items)} items use the released KAR knowledge in "
                   f"{DATASET_DIR}; the backbone writes the rest")
    if plan.without_image:
        shown = plan.without_image
        log_stderr(f"[{prompt_id}] {len(shown)} of {len(items)} items have no image: no request for them, "
                   f"their description is their response ({', '.join(shown[:10])}{', ...' if len(shown) > 10 else ''})")
    requests = plan.requests(params, DATASET_DIR, responses_dir=out_dir)
    budget = stage_budget(params, backend, requests, cache)
    report = RunReport()
    max_failures = float(settings.get("max_failures", 0.0)) if PROMPTS[prompt_id].per_item else 0.0
    records = run_requests(requests, backend, cache, max_failures, label=prompt_id, budget=budget, report=report)
    metric = usage_metric(requests, records, backend, cache, prices, report)
    if plan.released or plan.without_image:
        by_item = {r["item_id"]: r for r in records}
        by_item.update({item_id: {"item_id": item_id, "text": text, "key": None, "model": "released",
                                  "failed": False} for item_id, text in plan.released.items()})
        by_item.update({r["item_id"]: r for r in no_image_records(items, plan.without_image)})
        records = [by_item[item.item_id] for item in items]
    metric["items_without_image"] = len(plan.without_image)
    if not PROMPTS[prompt_id].per_item:  # asked once per dataset (KAR's factor list)
        records = [{**records[0], "factors": parse_factor_list(records[0]["text"])}]
    write_jsonl(out_dir / f"{prompt_id}.jsonl", records)
    # What this run did (cached vs generated, wall time) changes on every rerun: it goes to the log,
    # not into the metric, so `dvc metrics diff` shows only changes in what the outputs cost.
    log_stderr(f"[{prompt_id}] this run: {metric.pop('this_run')}")
    if metric["failed"]:
        log_stderr(failed_items_notice(strategy, prompt_id, records, settings))
    return metric


def generate_strategy(params: Mapping, strategy: str) -> None:
    """The generate stage: data/responses/<strategy>/<prompt>.jsonl for every prompt the strategy's
    sources need, parents first, and their usage metric metrics/generate/<strategy>.json."""
    prompts = prompts_for(strategy_sources(dict(params), strategy), params)
    out_dir = RESPONSES_DIR / strategy
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}
    if prompts:
        log_stderr(f"generate {strategy}: prompts {prompts}")
        items = read_items(FILTERED_DIR / ITEMS_FILE)
        plans = plan_prompts(prompts, params, items, DATASET_DIR)  # the image guard, before any backbone
        backbone_name, backbone = registry_entry(dict(params), "backbone", "backbones")
        backend = create_backend(backbone_name, params.get("backbones") or {})
        cache = ResponseCache()
        try:
            for plan in plans:
                metrics[plan.prompt_id] = generate_prompt(strategy, plan, params, items, out_dir, backend,
                                                          cache, Prices.from_config(backbone))
        finally:
            backend.close()
            cache.close()
    else:
        log_stderr(f"generate {strategy}: the strategy uses no prompt; nothing to generate")
    write_json(USAGE_METRICS_DIR / f"{strategy}.json", metrics)
