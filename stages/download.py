"""DVC stage `download`: obtain the chosen dataset and write it as the data contract.

Reads params: dataset, datasets.<dataset>. Writes data/dataset/ (items.jsonl, interactions.csv,
images/, source.json); see xreflect/data/contract.py. The library function is
xreflect.data.sources.registry.write_dataset.
"""
from __future__ import annotations

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.data.sources.registry import write_dataset


def main() -> None:
    write_dataset(load_params())


if __name__ == "__main__":
    run_stage(main)
