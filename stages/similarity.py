"""DVC stage `similarity`: the data and PNG of the paper's Figure 3.

Reads data/embeddings/ (each source from the first strategy, in `run` order, that embedded it) and
params analyze, run. Writes plots/similarity.csv (one row per item and compared strategy, for
`dvc plots`), plots/similarity.png and the metric metrics/similarity.json. A compared response that
no strategy in `run` uses is left out, and the log and the metric say so. The library function is
xreflect.reporting.similarity.write_figure3.
"""
from __future__ import annotations

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.reporting.similarity import write_figure3


def main() -> None:
    write_figure3(load_params())


if __name__ == "__main__":
    run_stage(main)
