"""DVC stage `evaluate`: test metrics of every strategy under the sampled protocol and full ranking.

Reads data/splits/, models/<strategy>/split_<k>.npz for each strategy in `run`, and params dataset,
backbone, run, strategies, split, evaluate. Writes metrics/summary.json (what `dvc metrics diff`
compares), metrics/detail.json and metrics/report.md. The library function is
xreflect.evaluation.summary.evaluate_run.
"""
from __future__ import annotations

from xreflect.core.cli import run_stage
from xreflect.core.config import load_params
from xreflect.evaluation.summary import evaluate_run


def main() -> None:
    evaluate_run(load_params())


if __name__ == "__main__":
    run_stage(main)
