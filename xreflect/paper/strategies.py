"""Strategies as data: the embedding sources each one concatenates, checked against the prompts."""
from __future__ import annotations

from xreflect.core.config import ParamsError
from xreflect.paper.prompts import BASE_SOURCES, PROMPTS


def strategy_sources(params: dict, strategy: str) -> list[str]:
    """The embedding sources `strategy` concatenates, each checked against the known sources."""
    strategies = params.get("strategies") or {}
    if strategy not in strategies:
        raise ParamsError(f"params.yaml: strategy {strategy!r} is not defined; allowed values are "
                          f"{sorted(strategies)} (the keys of 'strategies')")
    sources = strategies[strategy] or []
    if not isinstance(sources, list):
        raise ParamsError(f"params.yaml: strategies.{strategy} must be a list of embedding sources "
                          f"(e.g. [description, image]) or [] for Item Popularity, got {sources!r}")
    allowed = list(BASE_SOURCES) + sorted(PROMPTS)
    for source in sources:
        if source not in allowed:
            raise ParamsError(f"params.yaml: strategies.{strategy} lists unknown source {source!r}; "
                              f"allowed sources are {allowed}")
    return list(sources)


def prompt_spec(prompt_id: str):
    if prompt_id not in PROMPTS:
        raise ParamsError(f"unknown prompt {prompt_id!r}; allowed values are {sorted(PROMPTS)}")
    return PROMPTS[prompt_id]
