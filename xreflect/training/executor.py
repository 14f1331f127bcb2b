"""Where a train stage's grid jobs run: `placement.executor: local | ray`.

A grid job is one split of one strategy: the whole lr x dropout grid as train_grid trains it
(early stopping, selection on validation, one test scoring). `local` runs the jobs here one after
another, or with `placement.stack_splits: true` all in one stack (splits x grid points models per
launch, for a launch-bound GPU: xreflect/training/grid.py train_grids_stacked; the same results up
to float reduction order), or with `placement.workers: N` (CPU) N jobs side by side, this process and
N - 1 worker processes, the cores shared out between them (xreflect/training/side_by_side.py).
`ray` sends them to a Ray cluster at once (xreflect/training/ray_jobs.py;
one job per split there, stack_splits does not apply), so the five splits of a strategy, and the jobs of every strategy whose stage runs at the same time, train in
parallel. Either way each finished job's grid points land in the stage's checkpoint store and its
result comes back to the stage, which writes DVC's outs exactly as before.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from xreflect.core.config import ParamsError
from xreflect.core.io import log_stderr
from xreflect.data.split import Split
from xreflect.training.grid import default_device, train_grids_stacked
from xreflect.training.side_by_side import side_by_side, train_job
from xreflect.training.results import StrategyResult
from xreflect.training.jobs import GridJob


def run_grid_jobs(jobs: list[GridJob], features: np.ndarray, executor: str = "local",
                  log: Callable[[str], None] = log_stderr) -> Iterator[tuple[GridJob, StrategyResult]]:
    """Each job with its result, as the jobs finish (in order with `local` and one worker)."""
    if executor == "ray":
        from xreflect.training.ray_jobs import run_on_ray  # noqa: PLC0415 (ray is an optional extra)
        yield from run_on_ray(jobs, features, log)
        return
    if executor != "local":
        raise ParamsError(f"params.yaml: placement.executor is {executor!r}; use one of local, ray")
    if len(jobs) > 1 and all(job.config.stack_splits for job in jobs):  # one stack for every split
        results = train_grids_stacked([Split.load(job.split_path) for job in jobs], features, jobs[0].config,
                                      [job.store for job in jobs], log=log, labels=[job.label for job in jobs],
                                      full_k=jobs[0].full_k)
        yield from zip(jobs, results)
        return
    workers = min(jobs[0].config.workers, len(jobs)) if jobs else 1
    if workers > 1 and default_device().type == "cpu":
        yield from side_by_side(jobs, features, workers, log)
        return
    for job in jobs:
        yield job, train_job(job, features, log)
