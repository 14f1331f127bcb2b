"""Run one prompt over every item through a backbone, with the response cache in front of it.

Cached answers are reused; only the misses reach the backbone, and each answer is stored the moment
it arrives, so an interrupted stage resumes where it stopped. Failed requests are recorded in the
cache's failure table and retried on the next run; the stage fails only when more than
`max_failures` (a fraction of the items) failed.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from xreflect.backends.base import Backend, GenerationError, NotSent, Request
from xreflect.cache import ResponseCache, request_key
from xreflect.config import ParamsError, dataset_entry
from xreflect.cost import Budget, BudgetExhausted, Prices, summarize_usage, worst_case_cost
from xreflect.data.contract import Item, read_image
from xreflect.errors import EXIT_FAILURES, StopRun
from xreflect.image_guard import check_image_coverage
from xreflect.io import read_jsonl
from xreflect.pipeline import RESPONSES_DIR
from xreflect.prompts import PROMPTS, PromptSpec
from xreflect.throughput import Throughput


@dataclass(frozen=True)
class ParentText:
    """A value a chained prompt is built from: a response (with its cache key) or raw item text."""
    text: str
    key: str | None = None


class GenerationFailed(StopRun):
    """More items failed than generate.max_failures allows."""
    exit_code = EXIT_FAILURES


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


def separate_inputs(params: Mapping) -> dict[str, str]:
    """L_text and L_image of cross-reflection separate: {"r_text": source, "r_image": source}."""
    chosen = (params.get("generate") or {}).get("separate_inputs") or {}
    per_item = sorted(p for p in PROMPTS if PROMPTS[p].per_item)
    for name in ("r_text", "r_image"):
        source = chosen.get(name)
        if not (source in per_item or (source == "description" and name == "r_text")):
            raise ParamsError(f"params.yaml: generate.separate_inputs.{name}={source!r}; allowed "
                              f"values are per-item prompt ids {per_item}"
                              + (" or 'description'" if name == "r_text" else ""))
    return {name: chosen[name] for name in ("r_text", "r_image")}


def parent_prompts(prompt_id: str, params: Mapping) -> list[str]:
    """The prompts whose responses `prompt_id` is built from."""
    if prompt_id == "kar":
        return ["kar_factors"]
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        return [s for s in separate_inputs(params).values() if s != "description"]
    return []


def prompts_for(sources: list[str], params: Mapping) -> list[str]:
    """Every prompt a strategy's sources need, parents before children (each once)."""
    order: list[str] = []

    def visit(prompt_id: str) -> None:
        for parent in parent_prompts(prompt_id, params):
            visit(parent)
        if prompt_id not in order:
            order.append(prompt_id)

    for source in sources:
        if source in PROMPTS:
            visit(source)
    return order


def _find_parent(source: str, responses_dir: Path | None) -> Path | None:
    """A parent prompt's response file: in `responses_dir` (a strategy's, inside its stage), or in
    any strategy's directory (dry runs and batch files, outside the pipeline)."""
    if responses_dir is not None:
        return responses_dir / f"{source}.jsonl"
    return next(iter(sorted(RESPONSES_DIR.glob(f"*/{source}.jsonl"))), None)


def _parent_file(source: str, placeholder: str | None, responses_dir: Path | None,
                 fresh: bool = False) -> dict[str, ParentText] | None:
    """A parent prompt's responses by item, or None (dry run) when they are not generated yet."""
    path = _find_parent(source, responses_dir)
    if placeholder is not None and (fresh or path is None or not path.exists()):
        return None
    if path is None or not path.exists():
        raise FileNotFoundError(f"{path or RESPONSES_DIR / '<strategy>' / (source + '.jsonl')}: the "
                                f"responses of {source!r} are missing; generate them first (dvc repro)")
    return parent_texts(path)


def inputs_of(prompt_id: str, params: Mapping, items: list[Item],
              placeholder: str | None = None, responses_dir: Path | None = None,
              fresh: bool = False) -> tuple[dict, dict]:
    """Dataset-level fields and per-item parent responses that `prompt_id` is built from.

    Parents are read from `responses_dir` (the strategy's, inside its generate stage) or, when it
    is None, from whichever strategy generated them. `placeholder` is for estimates made before the
    parents exist (xreflect.cost): it stands in for each missing parent response, so the prompt's
    length can be estimated; no request built from it is ever sent (its parent key
    `placeholder:<field>` never matches a cache entry). `fresh` stands it in for every parent (an
    estimate for a dataset not generated yet)."""
    _, dataset = dataset_entry(dict(params))
    shared = {"item_kind": ParentText(str(dataset.get("item_kind", "an item")))}
    parents: dict[str, dict[str, ParentText]] = {}
    stand_in = lambda field: ParentText(placeholder or "", f"placeholder:{field}")  # noqa: E731
    if prompt_id == "kar":
        path = _find_parent("kar_factors", responses_dir)
        if placeholder is not None and (fresh or path is None or not path.exists()):
            shared["factors"] = stand_in("factors")
        else:
            (factors,) = read_jsonl(path)
            shared["factors"] = ParentText(factors["factors"], factors["key"])
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        for name, source in separate_inputs(params).items():
            if source == "description":
                parents[name] = {item.item_id: ParentText(item.description) for item in items}
            else:
                found = _parent_file(source, placeholder, responses_dir)
                parents[name] = found if found is not None else {i.item_id: stand_in(name) for i in items}
    return shared, parents


def prompt_requests(prompt_id: str, params: Mapping, items: list[Item], dataset_dir: Path,
                    placeholder: str | None = None, responses_dir: Path | None = None,
                    fresh: bool = False) -> list[Request]:
    """Every request of one prompt: one per item, or a single one for a dataset-level prompt.
    An image prompt first passes the image guard (xreflect.image_guard): it raises when too many
    items have no image, and otherwise leaves those items out (they are answered without a call)."""
    spec = PROMPTS[prompt_id]
    without_image = set(check_image_coverage(prompt_id, items, params))
    items = [item for item in items if item.item_id not in without_image]
    shared, parents = inputs_of(prompt_id, params, items, placeholder, responses_dir, fresh)
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
                        f"[{label}] budget reached: {budget.reached()}. {report.generated} new answers "
                        f"are cached; {len(pending)} requests not sent (up to "
                        f"${sum(worst[p] for p in pending):.4f} more). Check `python -m xreflect.cost`, "
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
