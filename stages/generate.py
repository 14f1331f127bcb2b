"""DVC stage `generate@<strategy>`: the responses of every prompt a strategy's sources need.

Reads data/filtered/items.jsonl, the images, and params backbone, backbones, dataset, datasets,
generate, strategies.<strategy>. For each prompt the strategy uses, parents first (KAR factors
before KAR; L_text and L_image before cross-reflection separate), writes
data/responses/<strategy>/<prompt>.jsonl: {item_id, text, key, model, failed} per item, and
metrics/generate/<strategy>.json: tokens and cost of those responses per prompt. Responses go
through the response cache (xreflect/generation/cache.py), shared by every strategy: a prompt that
two strategies use is paid for once, and a rerun asks only for what is missing. A strategy without
prompts (Text, Text + Image) writes an empty directory. The library function is
xreflect.generation.runner.generate_strategy.
"""
from __future__ import annotations

import argparse

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.generation.runner import generate_strategy
from xreflect.validate import validate_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    strategy = parser.parse_args(argv).strategy
    params = load_params()
    validate_params(params)  # every -S typo fails here, before any request is sent or paid for
    generate_strategy(params, strategy)


if __name__ == "__main__":
    run_stage(main)
