"""Every params.yaml value a stage reads, checked before any work starts.

`validate_params(params)` raises xreflect.core.config.ParamsError at the first bad value, with one
message naming the key (as `-S` would spell it), the value found, and what to put there instead.
It covers what a `dvc exp run -S ...` typo produces: an unknown dataset, backbone, strategy or
prompt id, a negative learning rate, a dropout rate >= 1, an empty grid, a failure fraction or
budget out of range. The stages themselves stay the authority on their own sections; this
check is meant to run before any stage works, so a bad value never costs a download, a paid call
or a training run.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from xreflect.core.config import ParamsError, dataset_entry, registry_entry, run_strategies
from xreflect.generation.requests import prompts_for
from xreflect.paper.prompts import PROMPTS
from xreflect.paper.strategies import strategy_sources


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(key: str, value: Any, fix: str) -> ParamsError:
    return ParamsError(f"params.yaml: {key} is {value!r}; {fix}")


def validate_params(params: Mapping[str, Any]) -> None:
    """Raise ParamsError naming the first bad value; return None when every checked value is usable."""
    params = dict(params)
    dataset_entry(params)  # dataset is a key of `datasets`, with a valid split_ratio
    registry_entry(params, "backbone", "backbones")
    _check_backbone(params)
    strategies = params.get("strategies") or {}
    if not strategies:
        raise ParamsError("params.yaml: strategies is empty; list at least one strategy, e.g. text: [description]")
    for strategy in strategies:
        strategy_sources(params, strategy)
    run_strategies(params)
    _check_train(params)
    _check_generate(params.get("generate") or {})
    _check_vision(params)
    _check_evaluate(params.get("evaluate") or {}, strategies)
    _check_analyze(params.get("analyze") or {})
    n_splits = (params.get("split") or {}).get("n_splits", 5)
    if not _integer(n_splits) or n_splits < 1:
        raise _fail("split.n_splits", n_splits, "give a positive integer, e.g. 5")


def _check_backbone(params: dict) -> None:
    from xreflect.backends.base import PROVIDERS

    name = params["backbone"]
    entry = params["backbones"][name] or {}
    if entry.get("provider") not in PROVIDERS:
        raise _fail(f"backbones.{name}.provider", entry.get("provider"), f"use one of {sorted(PROVIDERS)}")
    for key in ("concurrency", "max_attempts", "breaker_after", "max_tokens", "max_new_tokens", "batch_size"):
        if key in entry and (not _integer(entry[key]) or entry[key] < 1):
            raise _fail(f"backbones.{name}.{key}", entry[key], "give a positive integer")
    if "vision" in entry and not isinstance(entry["vision"], bool):
        raise _fail(f"backbones.{name}.vision", entry["vision"],
                    "give true (the model reads images) or false (a text-only model)")
    if "timeout_s" in entry and (not _number(entry["timeout_s"]) or entry["timeout_s"] <= 0):
        raise _fail(f"backbones.{name}.timeout_s", entry["timeout_s"], "give seconds > 0, e.g. 120")
    if "temperature" in entry and (not _number(entry["temperature"]) or entry["temperature"] < 0):
        raise _fail(f"backbones.{name}.temperature", entry["temperature"], "give a number >= 0, e.g. 0.0")
    for model, price in (entry.get("prices") or {}).items():
        if not isinstance(price, dict) or not all(_number(price.get(k)) and price[k] >= 0 for k in ("input", "output")):
            raise _fail(f"backbones.{name}.prices.{model}", price,
                        "give USD per million tokens as {input: <number >= 0>, output: <number >= 0>}")


def _check_vision(params: dict) -> None:
    """A text-only backbone (`vision: false`) gets no strategy that sends an image prompt: an image
    sent to a text-only chat server is dropped without an error, and the answer made up."""
    name = params["backbone"]
    backbones = params.get("backbones") or {}
    if (backbones[name] or {}).get("vision", True):
        return
    needs = {}
    for strategy in run_strategies(params):
        images = [p for p in prompts_for(strategy_sources(params, strategy), params) if PROMPTS[p].image]
        if images:
            needs[strategy] = images
    if not needs:
        return
    text_only = [s for s in run_strategies(params) if s not in needs]
    vision = sorted(b for b, entry in backbones.items() if (entry or {}).get("vision", True))
    listed = "; ".join(f"{strategy} ({', '.join(prompts)})" for strategy, prompts in needs.items())
    keep = (f"leave them out of run (-S 'run=[{','.join(text_only)}]')" if text_only
            else "run text-only strategies (e.g. -S 'run=[text,kar,llm_rec]')")
    raise ParamsError(f"params.yaml: backbone {name!r} is a text-only model (backbones.{name}.vision: false), "
                      f"and these strategies in run send image prompts, which need a vision model: {listed}. "
                      f"Pick a backbone that reads images (-S backbone=<one of {', '.join(vision)}>), or {keep}.")


def _check_train(params: dict) -> None:
    """The trainer's own checks (xreflect.training.config), on the section the chosen dataset gets."""
    from xreflect.training.config import train_config

    try:
        train_config(params)
    except ParamsError:
        raise
    except ValueError as error:  # TrainConfig names the key, the value and the fix
        raise ParamsError(str(error)) from error


def _check_generate(section: Mapping[str, Any]) -> None:
    per_item = sorted(p for p in PROMPTS if PROMPTS[p].per_item)
    for name, source in ((section.get("separate_inputs") or {}).items()):
        allowed = per_item + (["description"] if name == "r_text" else [])
        if name not in ("r_text", "r_image"):
            raise _fail(f"generate.separate_inputs.{name}", source, "the keys are r_text and r_image")
        if source not in allowed:
            raise _fail(f"generate.separate_inputs.{name}", source, f"use a prompt id, one of {allowed}")
    failures = section.get("max_failures", 0.0)
    if not _number(failures) or not 0 <= failures <= 1:
        raise _fail("generate.max_failures", failures, "give the fraction of items allowed to fail, 0 to 1, e.g. 0.01")
    for key in ("budget_usd_per_prompt", "budget_usd_total"):
        value = section.get(key)
        if value is not None and (not _number(value) or value < 0):
            raise _fail(f"generate.{key}", value, "give USD >= 0, or null for no cap")
    tokens = section.get("expected_output_tokens", 300)
    if not _integer(tokens) or tokens < 1:
        raise _fail("generate.expected_output_tokens", tokens, "give a positive integer, e.g. 300")


def _check_evaluate(section: Mapping[str, Any], strategies: Mapping[str, Any]) -> None:
    ks = section.get("ks", [1, 10])
    if not isinstance(ks, list) or not ks or not all(_integer(k) and k > 0 for k in ks):
        raise _fail("evaluate.ks", ks, "give a non-empty list of positive cut-offs, e.g. [1, 10]")
    baseline = section.get("baseline")
    if baseline is not None and baseline not in strategies:
        raise _fail("evaluate.baseline", baseline, f"use one of the strategies {sorted(strategies)}")


def _check_analyze(section: Mapping[str, Any]) -> None:
    per_item = sorted(p for p in PROMPTS if PROMPTS[p].per_item)
    reference = section.get("reference")
    if reference is not None and reference not in per_item:
        raise _fail("analyze.reference", reference, f"use a prompt id, one of {per_item}")
    responses = section.get("responses", [])
    for response in responses if isinstance(responses, list) else [responses]:
        if response not in per_item:
            raise ParamsError(f"params.yaml: analyze.responses lists {response!r}, which is not a prompt id; "
                              f"use ids from {per_item}")
