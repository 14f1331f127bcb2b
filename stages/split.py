"""DVC stage `split`: n per-user random splits, each with its stored validation and test negatives.

Reads data/filtered/ and params dataset, datasets, split. Writes data/splits/split_<k>.npz
(format in xreflect/data/split.py) and the metric metrics/splits.json.
The library function is xreflect.data.split.write_splits.
"""
from __future__ import annotations

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.data.split import write_splits


def main() -> None:
    write_splits(load_params())


if __name__ == "__main__":
    run_stage(main)
