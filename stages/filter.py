"""DVC stage `filter`: implicit feedback and the k-core (users and items with >= k interactions).

Reads data/dataset/ and params dataset, datasets. Writes data/filtered/ (items.jsonl with row i =
item index i, users.csv with row u = user index u, pairs.npy int32 [n, 2]) and the metric
metrics/data.json. The library function is xreflect.data.filtering.write_filtered.
"""
from __future__ import annotations

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.data.filtering import write_filtered


def main() -> None:
    write_filtered(load_params())


if __name__ == "__main__":
    run_stage(main)
