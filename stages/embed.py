"""DVC stage `embed@<strategy>`: frozen embeddings of a strategy's sources, row i = item index i.

Reads data/filtered/items.jsonl, data/responses/<strategy>/ (and the images for the `image`
source) and params embed, strategies.<strategy>. Writes data/embeddings/<strategy>/<source>.npy
(float32) for each source. The library function is xreflect.embedding.run.embed_strategy.
"""
from __future__ import annotations

import argparse

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.embedding.run import embed_strategy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    embed_strategy(load_params(), parser.parse_args(argv).strategy)


if __name__ == "__main__":
    run_stage(main)
