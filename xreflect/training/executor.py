"""Where a train stage's grid jobs run: `train.executor: local | ray`.

A grid job is one split of one strategy: the whole lr x dropout grid as train_grid trains it
(early stopping, selection on validation, one test scoring). `local` runs the jobs here one after
another, or with `train.stack_splits: true` all in one stack (splits x grid points models per
launch, for a launch-bound GPU: xreflect/training/grid.py train_grids_stacked; the same results up
to float reduction order), or with `train.workers: N` (CPU) N jobs side by side, this process and
N - 1 spawned ones, the cores shared out between them (`side_by_side`). `ray` sends them to a Ray cluster at once (xreflect/training/ray_jobs.py;
one job per split there, stack_splits does not apply), so the five splits of a strategy, and the jobs of every strategy whose stage runs at the same time, train in
parallel. Either way each finished job's grid points land in the stage's checkpoint store and its
result comes back to the stage, which writes DVC's outs exactly as before.
"""
from __future__ import annotations

import multiprocessing
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch

from xreflect.core.config import ParamsError
from xreflect.core.io import log_stderr
from xreflect.data.split import Split
from xreflect.core.memory import keep_freed_memory
from xreflect.training.grid import default_device, train_grid, train_grids_stacked
from xreflect.training.results import StrategyResult
from xreflect.training.jobs import GridJob


def run_grid_jobs(jobs: list[GridJob], features: np.ndarray, executor: str = "local",
                  log: Callable[[str], None] = log_stderr) -> Iterator[tuple[GridJob, StrategyResult]]:
    """Each job with its result, as the jobs finish (in order with `local`)."""
    if executor == "ray":
        from xreflect.training.ray_jobs import run_on_ray  # noqa: PLC0415 (ray is an optional extra)
        yield from run_on_ray(jobs, features, log)
        return
    if executor != "local":
        raise ParamsError(f"params.yaml: train.executor is {executor!r}; use one of local, ray")
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


def train_job(job: GridJob, features: np.ndarray, log: Callable[[str], None] = log_stderr) -> StrategyResult:
    return train_grid(Split.load(job.split_path), features, job.config, job.store, log=log, label=job.label,
                      full_k=job.full_k)


def side_by_side(jobs: list[GridJob], features: np.ndarray, workers: int,
                 log: Callable[[str], None] = log_stderr) -> Iterator[tuple[GridJob, StrategyResult]]:
    """The jobs on `workers` processes at once: this one and workers - 1 worker processes, each on
    cores // workers torch threads, each taking the next job when it is free.

    Why: a small problem's training step (the demo's) is a chain of small, memory-bound operations
    that a second thread barely speeds up (train@text on 2 AMD EPYC cores: 11.1 s on 2 threads,
    10.9 s on 1), while two 1-thread processes train two splits in the time of one. A job's result
    depends only on its thread count, not on the process it runs in; the workers save their grid
    points in the job's checkpoint store as the serial path does."""
    threads = max(1, torch.get_num_threads() // workers)
    log(f"train: {len(jobs)} grid jobs on {workers} processes side by side (train.workers), "
        f"{threads} torch thread(s) each")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context(start_method(threads)),
                                 initializer=_worker_start, initargs=(threads,)) as pool:
            # Every job goes to the pool, the last first, so the workers work from the back; this
            # process works from the front, taking each job that no worker has started yet
            # (cancel() succeeds only then). Nobody waits while a job is left.
            futures = {job.index: pool.submit(train_job, job, features) for job in reversed(jobs)}
            collected: set[int] = set()
            try:
                for job in jobs:
                    if futures[job.index].cancel():
                        collected.add(job.index)
                        yield job, train_job(job, features, log)
                    for other in jobs:  # what the workers finished meanwhile, written out now
                        if other.index not in collected and futures[other.index].done():
                            collected.add(other.index)
                            yield other, futures[other.index].result()
                for other in jobs:
                    if other.index not in collected:
                        yield other, futures[other.index].result()
            except BaseException:  # a job failed (or the stage stops): start no further job
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(previous)


def start_method(threads: int) -> str:
    """fork for 1-thread workers on Linux: a forked worker starts at once, with torch and the
    stage's modules loaded (train@text with 2 workers: 7.3 s, against 8.9 s spawning them), and a
    process at one torch thread never enters an OpenMP parallel region (torch's parallel_for and
    oneDNN run inline), so the parent's OpenMP pool cannot deadlock it, as with torch's own
    DataLoader workers. spawn for workers of several threads, and off Linux."""
    if threads > 1 or not sys.platform.startswith("linux"):
        return "spawn"
    # Python >= 3.12 warns at every fork of a process with threads (numpy's OpenBLAS pool is one)
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    return "fork"


def _worker_start(threads: int) -> None:
    keep_freed_memory()  # as run_stage does for the stage's own process
    torch.set_num_threads(threads)
