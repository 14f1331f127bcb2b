"""Run one prompt over every item through a backbone, with the response cache in front of it.

Cached answers are reused; only the misses reach the backbone, and each answer is stored the moment
it arrives, so an interrupted stage resumes where it stopped. Failed requests are recorded in the
cache's failure table and retried on the next run; the stage fails only when more than
`max_failures` (a fraction of the items) failed.
"""
from __future__ import annotations

import mimetypes
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from xreflect.backends.base import Backend, GenerationError, Request
from xreflect.cache import ResponseCache, request_key
from xreflect.config import ParamsError, dataset_entry
from xreflect.cost import Budget, BudgetExhausted, Prices, summarize_usage, worst_case_cost
from xreflect.data.contract import Item
from xreflect.io import read_jsonl
from xreflect.pipeline import check_declared_deps, response_path
from xreflect.prompts import PROMPTS, PromptSpec
from xreflect.throughput import Throughput


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


def parent_texts(path: Path) -> dict[str, ParentText]:
    return {r["item_id"]: ParentText(r["text"], r["key"]) for r in read_jsonl(path)}


def _parent_file(source: str, placeholder: str | None) -> dict[str, ParentText] | None:
    """A parent prompt's responses by item, or None (dry run) when they are not generated yet."""
    path = response_path(source)
    if placeholder is not None and not path.exists():
        return None
    return parent_texts(path)


def inputs_of(prompt_id: str, params: Mapping, items: list[Item],
              placeholder: str | None = None) -> tuple[dict, dict]:
    """Dataset-level fields and per-item parent responses that `prompt_id` is built from.

    `placeholder` is for estimates made before the parents exist (xreflect.cost): it stands in for
    each missing parent response, so the prompt's length can be estimated; no request built from
    it is ever sent (its parent key `placeholder:<field>` never matches a cache entry)."""
    _, dataset = dataset_entry(dict(params))
    shared = {"item_kind": ParentText(str(dataset.get("item_kind", "an item")))}
    parents: dict[str, dict[str, ParentText]] = {}
    stand_in = lambda field: ParentText(placeholder or "", f"placeholder:{field}")  # noqa: E731
    if prompt_id == "kar":
        path = response_path("kar_factors")
        if placeholder is not None and not path.exists():
            shared["factors"] = stand_in("factors")
        else:
            (factors,) = read_jsonl(path)
            shared["factors"] = ParentText(factors["factors"], factors["key"])
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        chosen = (params.get("generate") or {}).get("separate_inputs") or {}
        for name in ("r_text", "r_image"):
            source = chosen.get(name)
            if source == "description" and name == "r_text":
                parents[name] = {item.item_id: ParentText(item.description) for item in items}
            elif source in PROMPTS and PROMPTS[source].per_item:
                found = _parent_file(source, placeholder)
                parents[name] = found if found is not None else {i.item_id: stand_in(name) for i in items}
            else:
                raise ParamsError(f"params.yaml: generate.separate_inputs.{name}={source!r}; allowed "
                                  f"values are per-item prompt ids {sorted(p for p in PROMPTS if PROMPTS[p].per_item)}"
                                  + (" or 'description'" if name == "r_text" else ""))
            if source != "description":
                check_declared_deps(f"generate_{prompt_id}", [response_path(source)])
    return shared, parents


def prompt_requests(prompt_id: str, params: Mapping, items: list[Item], dataset_dir: Path,
                    placeholder: str | None = None) -> list[Request]:
    """Every request of one prompt: one per item, or a single one for a dataset-level prompt."""
    spec = PROMPTS[prompt_id]
    shared, parents = inputs_of(prompt_id, params, items, placeholder)
    if spec.per_item:
        return build_requests(spec, items, dataset_dir, shared, parents)
    fields = {name: shared[name].text for name in spec.fields}
    return [Request(spec.id, spec.version, spec.render(**fields), None, fields=fields)]


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
            cache.record_failure(keys[index], requests[index], str(outcome))
        else:
            cache.put(keys[index], requests[index], outcome)
            report.generated += 1
            meter.add(outcome.usage, outcome.latency_s)
            bar.set_postfix_str(meter.summary(), refresh=False)
            if budget is not None:
                report.new_cost_usd += budget.charge(backend.identity(requests[index]).get("model"),
                                                     outcome.usage)
        bar.update(1)


def run_requests(requests: list[Request], backend: Backend, cache: ResponseCache,
                 max_failures: float = 0.0, label: str = "", budget: Budget | None = None,
                 report: RunReport | None = None) -> list[dict]:
    """Answer every request (cache first), returning one record per request in order:
    {item_id, text, key, model, failed}. A failed request under the allowed fraction falls back
    to the item's description so that downstream shapes stay fixed; the record says `failed`.

    With a `budget`, misses go to the backend in slices that fit under it at their worst case
    (see xreflect.cost); when not even the next request fits, BudgetExhausted stops the run, the
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
                        f"[{label}] budget reached: spent ${budget.spent_usd:.4f} of "
                        f"${budget.limit_usd:.2f} (generate.budget_usd_per_prompt) on {report.generated} new "
                        f"answers, which are cached; {len(pending)} requests not sent (up to "
                        f"${sum(worst[p] for p in pending):.4f} more). Check `python -m xreflect.cost`, "
                        "raise the budget and rerun.")
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
