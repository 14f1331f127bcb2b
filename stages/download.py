"""DVC stage `download`: obtain the chosen dataset and write it as the data contract.

Reads params: dataset, datasets.<dataset>. Writes data/dataset/ (items.jsonl, interactions.csv,
images/, source.json); see xreflect/data/contract.py.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


from xreflect.cli import run_stage
from xreflect.config import dataset_entry, load_params
from xreflect.data.sources import prepare_dataset

OUT = Path("data/dataset")


def main() -> None:
    params = load_params()
    name, entry = dataset_entry(params)
    # Build beside the final directory and swap it in, so an interrupted run never leaves a
    # half-written dataset under data/dataset.
    partial = OUT.with_name(OUT.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    prepare_dataset(partial, name, entry, params)
    shutil.rmtree(OUT, ignore_errors=True)
    partial.rename(OUT)
    print(f"download: dataset {name!r} written to {OUT}/", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
