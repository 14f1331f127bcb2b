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
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from xreflect.backends.base import Request

# OpenAI's published image accounting for GPT-4o-class models: 85 tokens per image plus 170 per
# 512-px tile after scaling the image into 2048x2048 and its short side down to 768.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators of one user message


class BudgetExhausted(RuntimeError):
    """The next request could take the stage past its budget; nothing more is sent."""


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
    """USD per million tokens, by model id: {model: (input, output)}."""
    by_model: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, backbone: Mapping[str, Any]) -> "Prices":
        table = backbone.get("prices") or {}
        return cls({model: (float(p.get("input", 0.0)), float(p.get("output", 0.0)))
                    for model, p in table.items()})

    def cost(self, model: str | None, prompt_tokens: float, completion_tokens: float) -> float:
        price_in, price_out = self.by_model.get(model or "", (0.0, 0.0))
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6

    def cost_of_usage(self, model: str | None, usage: Mapping[str, Any]) -> float:
        return self.cost(model, usage.get("prompt_tokens", 0) or 0, usage.get("completion_tokens", 0) or 0)


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
    """The spending cap of one stage run; `spent_usd` counts actual usage of answers received."""
    limit_usd: float | None
    prices: Prices
    spent_usd: float = 0.0

    def affordable(self, worst_costs: Iterable[float]) -> int:
        """How many of the next requests (in order) fit under the cap if each costs its worst case."""
        costs = list(worst_costs)
        if self.limit_usd is None:
            return len(costs)
        room, count = self.limit_usd - self.spent_usd, 0
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
    """The prompts the pipeline generates for the current params, parents before children."""
    from xreflect.prompts import PROMPTS

    needed = {source for sources in (params.get("strategies") or {}).values() for source in sources or []
              if source in PROMPTS}
    chosen = (params.get("generate") or {}).get("separate_inputs") or {}
    for prompt_id in list(needed):
        if "kar_factors" in PROMPTS[prompt_id].parents:
            needed.add("kar_factors")
        if {"r_text", "r_image"} & set(PROMPTS[prompt_id].parents):
            needed |= {chosen.get(name) for name in ("r_text", "r_image")} & set(PROMPTS)
    return [prompt_id for prompt_id in PROMPTS if prompt_id in needed]  # PROMPTS lists parents first


def estimate(params: Mapping[str, Any], prompt_ids: list[str], cache, expected_output_tokens: int) -> list[dict]:
    """Per prompt: requests, cached, calls to make, estimated tokens, expected and worst-case cost.

    A chained prompt whose parents are not generated yet is estimated with a stand-in parent of
    `expected_output_tokens` (all its requests count as calls)."""
    from xreflect.backends import create_backend
    from xreflect.cache import request_key
    from xreflect.config import registry_entry
    from xreflect.data.contract import ITEMS_FILE, read_items
    from xreflect.generate import prompt_requests
    from xreflect.image_guard import MissingImages, items_without_image
    from xreflect.pipeline import DATASET_DIR, FILTERED_DIR

    name, backbone = registry_entry(dict(params), "backbone", "backbones")
    backend = create_backend(name, params.get("backbones") or {})  # loads no model, opens no connection
    prices = Prices.from_config(backbone)
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    placeholder = "word " * expected_output_tokens
    rows = []
    for prompt_id in prompt_ids:
        row = {"prompt": prompt_id, "requests": 0, "cached": 0, "calls": 0, "prompt_tokens": 0,
               "completion_tokens": 0, "cost_usd": 0.0, "worst_case_usd": 0.0,
               "without_image": len(items_without_image(prompt_id, items)), "blocked": None}
        try:  # the image guard, exactly as the generate stage applies it
            requests = prompt_requests(prompt_id, params, items, DATASET_DIR, placeholder=placeholder)
        except MissingImages as err:
            row.update(blocked=str(err), models=[])
            rows.append(row)
            continue
        identities = [backend.identity(request) for request in requests]
        keys = [request_key(request, identity) for request, identity in zip(requests, identities)]
        cached = cache.get_many(keys)
        row.update(requests=len(requests), cached=len(cached))
        for request, identity, key in zip(requests, identities, keys):
            if key in cached:
                continue
            prompt_tokens = estimate_prompt_tokens(request, identity.get("image_detail") or "auto")
            completion = min(expected_output_tokens, identity.get("max_tokens") or identity.get("max_new_tokens")
                             or expected_output_tokens)
            row["calls"] += 1
            row["prompt_tokens"] += prompt_tokens
            row["completion_tokens"] += completion
            row["cost_usd"] += prices.cost(identity.get("model"), prompt_tokens, completion)
            row["worst_case_usd"] += worst_case_cost(request, identity, prices)
        row["models"] = sorted({identity.get("model") for identity in identities})
        rows.append(row)
    backend.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Dry run: `python -m xreflect.cost [--prompt P ...]` prints what generation would cost now."""
    import argparse
    import json

    from xreflect.cache import ResponseCache
    from xreflect.config import registry_entry, load_params

    parser = argparse.ArgumentParser(description="Estimate calls, tokens and cost of generation "
                                     "for the current params.yaml; sends nothing.")
    parser.add_argument("--prompt", action="append", help="only these prompts (default: all in use)")
    parser.add_argument("--expected-output-tokens", type=int, default=None,
                        help="typical answer length (default: generate.expected_output_tokens or 300)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--backbone", help="estimate for this backbone instead of params' `backbone`")
    args = parser.parse_args(argv)
    params = load_params()
    params["backbone"] = args.backbone or params.get("backbone")
    settings = params.get("generate") or {}
    expected = args.expected_output_tokens or int(settings.get("expected_output_tokens", 300))
    cache = ResponseCache()
    try:
        rows = estimate(params, args.prompt or prompts_in_use(params), cache, expected)
    finally:
        cache.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    name, backbone = registry_entry(params, "backbone", "backbones")
    budget = settings.get("budget_usd_per_prompt")
    discount = float(backbone.get("batch_discount", 1.0))
    print(f"backbone {name}; answers assumed ~{expected} tokens; costs in USD")
    print(f"{'prompt':22} {'requests':>8} {'cached':>7} {'calls':>6} {'in tok':>9} {'out tok':>9} "
          f"{'expected':>9} {'worst':>9}")
    for row in rows:
        flag = "  > budget" if budget is not None and row["worst_case_usd"] > float(budget) else ""
        flag = "  BLOCKED: too many items without an image" if row["blocked"] else flag
        print(f"{row['prompt']:22} {row['requests']:8d} {row['cached']:7d} {row['calls']:6d} "
              f"{row['prompt_tokens']:9d} {row['completion_tokens']:9d} {row['cost_usd']:9.4f} "
              f"{row['worst_case_usd']:9.4f}{flag}")
    total, worst = sum(r["cost_usd"] for r in rows), sum(r["worst_case_usd"] for r in rows)
    print(f"{'total':22} {sum(r['requests'] for r in rows):8d} {sum(r['cached'] for r in rows):7d} "
          f"{sum(r['calls'] for r in rows):6d} {sum(r['prompt_tokens'] for r in rows):9d} "
          f"{sum(r['completion_tokens'] for r in rows):9d} {total:9.4f} {worst:9.4f}")
    if discount != 1.0:
        print(f"with the Batch API (x{discount}): expected {total * discount:.4f}, worst {worst * discount:.4f}")
    print(f"budget per prompt stage (generate.budget_usd_per_prompt): {budget}")
    without = [r for r in rows if r["without_image"] and not r["blocked"]]
    if without:
        print("answered by their description, no call (items without an image): "
              + ", ".join(f"{r['prompt']} {r['without_image']}" for r in without))
    blocked = [r for r in rows if r["blocked"]]
    for row in blocked:
        print(f"BLOCKED {row['blocked']}")
    if blocked:
        raise SystemExit(f"{len(blocked)} image prompt(s) would send nothing: see BLOCKED above")


if __name__ == "__main__":
    main()
