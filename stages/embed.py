"""DVC stage `embed`: frozen embeddings of every strategy in `run`, row i = item index i.

Reads data/filtered/items.jsonl, data/responses/<strategy>/ (and the images for the `image`
source) and params embed, run, strategies. Writes data/embeddings/<strategy>/<source>.npy (float32)
for each source of each strategy, and data/embeddings/<strategy>/sources.json. One process and one
encoder load for the whole run; a train stage still reruns only when its own strategy's files
changed. The library function is xreflect.embedding.run.embed_run.
"""
from __future__ import annotations

import argparse

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.embedding.run import embed_run


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    embed_run(load_params())


if __name__ == "__main__":
    run_stage(main)
