"""`placement.workers: N`: a train stage's grid jobs on N local processes at once (CPU).

This process and N - 1 worker processes share the cores (cores // N torch threads each) and one
counter of the next job to start: each takes the next job whenever it is free, so nobody waits
while a job is left, whatever the jobs' lengths. Workers send their results back through a queue
(its sender thread lets a worker go on to its next job at once); the stage writes every result
as soon as it has it, and the workers save their grid points in the job's checkpoint store as
the serial path does. A job's result depends only on its thread
count, not on the process it runs in.

Why: a small problem's training step (the demo's) is a chain of small, memory-bound operations
that a second thread barely speeds up (train@text on 2 AMD EPYC cores: 11.1 s on 2 threads,
10.9 s on 1), while two 1-thread processes train two splits in the time of one.
"""
from __future__ import annotations

import multiprocessing
import queue
import sys
import time
import warnings
from typing import Callable, Iterator

import numpy as np
import torch

from xreflect.core.io import log_stderr
from xreflect.core.memory import keep_freed_memory
from xreflect.data.split import Split
from xreflect.training.grid import train_grid
from xreflect.training.jobs import GridJob
from xreflect.training.results import StrategyResult

POLL_S = 0.05  # how often the stage looks for results while it has no job of its own left


def train_job(job: GridJob, features: np.ndarray, log: Callable[[str], None] = log_stderr) -> StrategyResult:
    return train_grid(Split.load(job.split_path), features, job.config, job.store, log=log, label=job.label,
                      full_k=job.full_k)


def side_by_side(jobs: list[GridJob], features: np.ndarray, workers: int,
                 log: Callable[[str], None] = log_stderr) -> Iterator[tuple[GridJob, StrategyResult]]:
    """Each job with its result, as the jobs finish, trained by `workers` processes at once."""
    threads = max(1, torch.get_num_threads() // workers)
    log(f"train: {len(jobs)} grid jobs on {workers} processes side by side (placement.workers), "
        f"{threads} torch thread(s) each")
    context = multiprocessing.get_context(start_method(threads))
    next_job = context.Value("i", 0)  # with its lock: the index in `jobs` of the next job to start
    results = context.Queue()         # (index, result) or (index, exception) from the workers
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    processes = [context.Process(target=_work, args=(jobs, features, threads, next_job, results), daemon=True)
                 for _ in range(workers - 1)]
    for process in processes:
        process.start()
    pending = set(range(len(jobs)))
    try:
        while (index := _take(next_job, len(jobs))) is not None:
            pending.discard(index)
            yield jobs[index], train_job(jobs[index], features, log)
            while (item := _get(results, timeout=None)) is not None:  # what the workers finished meanwhile
                yield _outcome(jobs, item, pending)
        while pending:  # the workers' last jobs
            item = _get(results, timeout=POLL_S)
            if item is None and not any(process.is_alive() for process in processes):
                item = _get(results, timeout=None)  # sent just before the worker exited
                if item is None:
                    raise RuntimeError(f"train: a worker process died before it reported "
                                       f"{', '.join(sorted(jobs[i].label.strip() for i in pending))}; rerun "
                                       "the stage to train what is missing (finished grid points are kept)")
            if item is not None:
                yield _outcome(jobs, item, pending)
    except BaseException:  # a job failed (or the stage stops): no further job starts anywhere
        with next_job.get_lock():
            next_job.value = len(jobs)
        for process in processes:  # their finished grid points are in the checkpoint stores
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join()
        torch.set_num_threads(previous)


def _take(next_job, n_jobs: int) -> int | None:
    with next_job.get_lock():
        index = next_job.value
        if index >= n_jobs:
            return None
        next_job.value = index + 1
    return index


def _get(results, timeout: float | None) -> tuple | None:
    """The next (index, outcome) from the workers; None if none arrives (timeout None: none waiting)."""
    try:
        return results.get_nowait() if timeout is None else results.get(timeout=timeout)
    except queue.Empty:
        return None


def _outcome(jobs: list[GridJob], item: tuple, pending: set[int]) -> tuple[GridJob, StrategyResult]:
    index, outcome = item
    pending.discard(index)
    if isinstance(outcome, BaseException):  # a worker's job failed: the stage fails with its error
        raise outcome
    return jobs[index], outcome


def _work(jobs: list[GridJob], features: np.ndarray, threads: int, next_job, results) -> None:
    """A worker process: the next job while there is one; every outcome goes to `results`."""
    keep_freed_memory()  # as run_stage does for the stage's own process
    torch.set_num_threads(threads)
    while (index := _take(next_job, len(jobs))) is not None:
        try:
            results.put((index, train_job(jobs[index], features)))
        except Exception as err:  # noqa: BLE001 - reported by the stage, which stops handing out jobs
            results.put((index, err))
            return


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
