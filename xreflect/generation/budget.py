"""What generation costs: token estimates before a call, prices, the budget cap, the usage metric.

Prices live in params.yaml beside the backbone (`backbones.<name>.prices: {model: {input, output}}`,
USD per million tokens), because they belong to the model ids named there. A model without a price
(a local vLLM/lmdeploy server, a transformers model) costs 0 and is never stopped by the budget.

The budget (`generate.budget_usd_per_prompt`) caps what one generate stage may spend on new calls
in one run. Before a request is sent, its worst case is reserved: the estimated prompt tokens plus
`max_tokens` of output. Requests go out only while every reservation fits under the cap, so the
cap holds even if all of them answer at full length. Cached answers cost nothing.

`python -m xreflect.generation.estimate` is the dry run: calls, tokens and cost for the current
params, before anything is spent.
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
from xreflect.core.config import ParamsError
from xreflect.core.errors import EXIT_BUDGET, StopRun

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
