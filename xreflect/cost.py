"""What generation costs: token estimates before a call, prices, the budget cap, the usage metric.

Prices live in params.yaml beside the backbone (`backbones.<name>.prices: {model: {input, output}}`,
USD per million tokens), because they belong to the model ids named there. A model without a price
(a local vLLM/lmdeploy server, a transformers model) costs 0 and is never stopped by the budget.

The budget (`generate.budget_usd_per_prompt`) caps what one generate stage may spend on new calls
in one run. Before a request is sent, its worst case is reserved: the estimated prompt tokens plus
`max_tokens` of output. Requests go out only while every reservation fits under the cap, so the
cap holds even if all of them answer at full length. Cached answers cost nothing.

`python -m xreflect.cost` is the dry run: calls, tokens and cost for the current params, before
anything is spent (see `main`).
"""
from __future__ import annotations

import io
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from xreflect.backends.base import Request
from xreflect.errors import EXIT_BUDGET, StopRun

# OpenAI's published image accounting for GPT-4o-class models: 85 tokens per image plus 170 per
# 512-px tile after scaling the image into 2048x2048 and its short side down to 768.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators of one user message
BUDGET_KEYS = ("budget_usd_per_prompt", "budget_usd_total")


class BudgetExhausted(StopRun):
    """The next request could take the stage past its budget; nothing more is sent."""
    exit_code = EXIT_BUDGET


def image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Prompt tokens an image costs (OpenAI's tile formula; `auto` counted as `high`, the worse)."""
    if detail == "low":
        return IMAGE_BASE_TOKENS
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * math.ceil(width / 512) * math.ceil(height / 512)


def estimate_prompt_tokens(request: Request, detail: str = "auto") -> int:
    """A conservative estimate of the prompt tokens: English runs ~4 characters per token; 3 keeps
    the estimate above the real count for most text, which is what a budget reservation needs."""
    tokens = math.ceil(len(request.prompt) / 3) + MESSAGE_OVERHEAD_TOKENS
    if request.image is not None:
        tokens += image_tokens(*image_size(request.image), detail)
    return tokens


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, by model id: {model: (input, output)}; answers that came through the
    Batch API (usage marked `batch`) cost `batch_discount` times that."""
    by_model: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    batch_discount: float = 1.0

    @classmethod
    def from_config(cls, backbone: Mapping[str, Any]) -> "Prices":
        table = backbone.get("prices") or {}
        return cls({model: (float(p.get("input", 0.0)), float(p.get("output", 0.0)))
                    for model, p in table.items()}, float(backbone.get("batch_discount", 1.0)))

    def cost(self, model: str | None, prompt_tokens: float, completion_tokens: float) -> float:
        price_in, price_out = self.by_model.get(model or "", (0.0, 0.0))
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6

    def cost_of_usage(self, model: str | None, usage: Mapping[str, Any]) -> float:
        cost = self.cost(model, usage.get("prompt_tokens", 0) or 0, usage.get("completion_tokens", 0) or 0)
        return cost * self.batch_discount if usage.get("batch") else cost


def worst_case_cost(request: Request, identity: Mapping[str, Any], prices: Prices) -> float:
    """The most `request` can cost: estimated prompt tokens plus a full `max_tokens` answer."""
    model = identity.get("model")
    if model not in prices.by_model:
        return 0.0
    detail = identity.get("image_detail") or "auto"
    max_out = identity.get("max_tokens") or identity.get("max_new_tokens") or 0
    return prices.cost(model, estimate_prompt_tokens(request, detail), max_out)


@dataclass
class Budget:
    """The spending caps of one stage run; `spent_usd` counts actual usage of answers received.

    `limit_usd` caps this stage run (generate.budget_usd_per_prompt). `total_limit_usd` caps the
    whole run (generate.budget_usd_total): everything generation has spent on this dataset with this
    backbone, over all prompts and all runs, as recorded answer by answer in the response cache's
    ledger under `scope` ("<dataset>/<backbone>"); `spent_before_usd` is that sum when the stage
    started. Either may be None (no cap)."""
    limit_usd: float | None
    prices: Prices
    spent_usd: float = 0.0
    total_limit_usd: float | None = None
    spent_before_usd: float = 0.0
    scope: str | None = None

    def room(self) -> float | None:
        rooms = [limit - spent for limit, spent in ((self.limit_usd, self.spent_usd),
                 (self.total_limit_usd, self.spent_before_usd + self.spent_usd)) if limit is not None]
        return min(rooms) if rooms else None

    def affordable(self, worst_costs: Iterable[float]) -> int:
        """How many of the next requests (in order) fit under the caps if each costs its worst case."""
        costs = list(worst_costs)
        room = self.room()
        if room is None:
            return len(costs)
        count = 0
        for cost in costs:
            if cost > room:
                break
            room -= cost
            count += 1
        return count

    def charge(self, model: str | None, usage: Mapping[str, Any]) -> float:
        cost = self.prices.cost_of_usage(model, usage)
        self.spent_usd += cost
        return cost

    def reached(self) -> str:
        """Which cap stops the run, with what was spent under it."""
        per_stage = None if self.limit_usd is None else self.limit_usd - self.spent_usd
        whole = None if self.total_limit_usd is None else \
            self.total_limit_usd - self.spent_before_usd - self.spent_usd
        if whole is not None and (per_stage is None or whole < per_stage):
            return (f"the whole-run budget generate.budget_usd_total=${self.total_limit_usd:.2f} for "
                    f"{self.scope}: ${self.spent_before_usd:.4f} spent by earlier runs and "
                    f"${self.spent_usd:.4f} by this one")
        return (f"the per-stage budget generate.budget_usd_per_prompt=${self.limit_usd:.2f}: "
                f"${self.spent_usd:.4f} spent by this run")


def is_local_url(url: str) -> bool:
    """A server on this machine or a private network (a vLLM/lmdeploy/Ollama box): free to call."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def require_prices(backbone_name: str, backbone: Mapping[str, Any], models: Mapping[str, Iterable[str]],
                   server_urls: Iterable[str], settings: Mapping[str, Any]) -> None:
    """Refuse a budgeted run on a paid server with a model that has no price: the budget could not
    hold for it (it would count as $0). `models` maps each model id to the prompts that use it."""
    budgets = {key: settings.get(key) for key in BUDGET_KEYS if settings.get(key) is not None}
    urls = list(server_urls)
    if backbone.get("provider") != "openai" or not budgets or (urls and all(map(is_local_url, urls))):
        return
    prices = Prices.from_config(backbone)
    missing = {model: sorted(set(prompts)) for model, prompts in models.items() if model not in prices.by_model}
    if missing:
        from xreflect.config import ParamsError

        model, prompts = next(iter(missing.items()))
        raise ParamsError(
            f"params.yaml: backbones.{backbone_name}.prices has no price for model {model!r} (used by "
            f"{', '.join(prompts)}), so the budget ({', '.join(f'generate.{k}={v}' for k, v in budgets.items())}) "
            f"cannot hold for it. Add its price, in USD per million tokens, from the provider's pricing "
            f"page under backbones.{backbone_name}.prices: `{model}: {{input: <USD>, output: <USD>}}` "
            "({input: 0, output: 0} for a server that charges nothing); or set the budgets to null to run "
            "without a cap." + (f" Also without a price: {list(missing)[1:]}." if len(missing) > 1 else ""))


def ledger_scope(params: Mapping[str, Any]) -> str:
    """The whole run a total budget covers: one dataset generated with one backbone."""
    return f"{params.get('dataset')}/{params.get('backbone')}"


def stage_budget(params: Mapping[str, Any], backend, requests: Iterable[Request], cache) -> Budget:
    """The budget of one generate stage run, after checking that every paid model has a price."""
    backbone = (params.get("backbones") or {})[backend.name]
    settings = params.get("generate") or {}
    models: dict[str, list[str]] = {}
    for request in requests:
        models.setdefault(backend.identity(request).get("model"), []).append(request.template_id)
    urls = backend.base_urls() if hasattr(backend, "base_urls") else []
    require_prices(backend.name, backbone, models, urls, settings)
    scope = ledger_scope(params)
    total = settings.get("budget_usd_total")
    return Budget(settings.get("budget_usd_per_prompt"), Prices.from_config(backbone),
                  total_limit_usd=None if total is None else float(total),
                  spent_before_usd=cache.spent_usd(scope), scope=scope)


def summarize_usage(models: Iterable[str | None], usages: Iterable[Mapping[str, Any]],
                    prices: Prices) -> dict:
    """Token totals and cost of a set of responses (each with the model it was asked of)."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    for model, usage in zip(models, usages):
        totals["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
        totals["completion_tokens"] += int(usage.get("completion_tokens", 0) or 0)
        totals["cost_usd"] += prices.cost_of_usage(model, usage)
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return totals


def prompts_in_use(params: Mapping[str, Any]) -> list[str]:
    """The prompts the pipeline generates for the strategies in `run`, parents before children."""
    from xreflect.config import run_strategies
    from xreflect.generate import prompts_for
    from xreflect.strategies import strategy_sources

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
    from xreflect.config import ParamsError, dataset_entry
    from xreflect.data.contract import ITEMS_FILE, Item, read_items
    from xreflect.io import read_json
    from xreflect.pipeline import FILTERED_DIR

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
    from PIL import Image

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
    from xreflect.backends import create_backend
    from xreflect.cache import request_key
    from xreflect.config import registry_entry
    from xreflect.generate import prompt_requests
    from xreflect.image_guard import MissingImages, items_without_image
    from xreflect.prompts import PROMPTS

    name, backbone = registry_entry(dict(params), "backbone", "backbones")
    backend = create_backend(name, params.get("backbones") or {})  # loads no model, opens no connection
    prices = Prices.from_config(backbone)
    placeholder = "word " * expected_output_tokens
    rows = []
    for prompt_id in prompt_ids:
        row = {"prompt": prompt_id, "requests": 0, "cached": 0, "calls": 0, "prompt_tokens": 0,
               "completion_tokens": 0, "cost_usd": 0.0, "worst_case_usd": 0.0, "models": [], "unpriced": [],
               "without_image": len(items_without_image(prompt_id, source.items)), "blocked": None}
        try:  # the image guard, exactly as the generate stage applies it
            requests = prompt_requests(prompt_id, params, source.items, dataset_dir, placeholder=placeholder,
                                       fresh=source.estimated)
        except MissingImages as err:
            row["blocked"] = str(err)
            rows.append(row)
            continue
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
    """Dry run: `python -m xreflect.cost [--prompt P ...]` prints what generation would cost now."""
    import argparse
    import json
    import tempfile

    from xreflect.cache import ResponseCache
    from xreflect.config import load_params, registry_entry
    from xreflect.pipeline import DATASET_DIR

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
    from xreflect.cli import run_stage

    run_stage(main, "cost")
