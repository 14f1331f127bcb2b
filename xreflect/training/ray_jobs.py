"""`placement.executor: ray`: a train stage's grid jobs on a Ray cluster.

The cluster is the one RAY_ADDRESS names (e.g. `ray://head:10001`), else the one `ray start`
started or joined on this machine, else a local Ray started for the run and stopped after it
(Ray's own lookup order for ray.init()). The job's code
travels with it (the xreflect package as a Ray py_module), so every worker runs the code the
checkpoint store's key was computed from; the workers need only the project's requirements.

Each job gets its split, the features (one copy in Ray's object store) and the grid points the
stage's checkpoint store already holds; it returns its StrategyResult and its finished points,
which the stage saves in its store as soon as the job is done. So a worker that dies loses only
its own job, which Ray retries (up to RETRIES times); a job that fails for good is reported after
the others have finished and been saved, and a rerun of the stage trains only what is missing.

Per job: XREFLECT_RAY_JOB_CPUS CPU cores (default 1; also the job's torch threads) and
XREFLECT_RAY_JOB_GPUS GPUs (default 0; with 1 the job trains on its GPU, stacking the grid).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from xreflect.core.config import ParamsError
from xreflect.data.split import Split
from xreflect.training.model import State
from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.jobs import GridJob
from xreflect.training.results import PointResult, StrategyResult

RETRIES = 3  # attempts after a worker or node dies while running a job
XREFLECT = Path(__file__).resolve().parents[1]

Points = dict[GridPoint, tuple[PointResult, State | None]]


class MemoryStore:
    """A PointStore in memory: brings a job the points the stage already holds, and takes its
    finished (and pruned) points back to the stage."""

    def __init__(self, points: Points | None = None):
        self.points: Points = dict(points or {})

    def load(self, point: GridPoint) -> tuple[PointResult, State | None] | None:
        return self.points.get(point)

    def save(self, point: GridPoint, result: PointResult, state: State | None) -> None:
        self.points[point] = (result, state)

    def prune(self, points: list[GridPoint], keep: GridPoint) -> None:
        for point in points:
            if point != keep and point in self.points:
                self.points[point] = (self.points[point][0], None)


def grid_job(split: Split, features: np.ndarray, config: TrainConfig, restored: Points, threads: int,
             label: str, full_k: int | None = None) -> tuple[StrategyResult, Points]:
    """One grid job on a worker: train_grid with the points already done, as the local executor."""
    import torch  # noqa: PLC0415

    from xreflect.training.grid import train_grid  # noqa: PLC0415

    torch.set_num_threads(threads)
    store = MemoryStore(restored)
    features = np.array(features)  # a writable copy: Ray's shared copy is read-only
    return train_grid(split, features, config, store, label=label, full_k=full_k), store.points


def ray_module():
    try:
        import ray  # noqa: PLC0415
    except ImportError as err:
        raise ParamsError("params.yaml: placement.executor is 'ray' but the ray package is not installed; "
                           "pip install -e '.[ray]' (or -r requirements-ray.txt), or set placement.executor: local") from err
    return ray


def runtime_env() -> dict:
    """Ship this checkout's xreflect package with the jobs (workers need only the requirements)."""
    return {"py_modules": [str(XREFLECT)]}


def connect(log: Callable[[str], None]) -> bool:
    """Join the cluster (see the module docstring) or start a local Ray; True when this call
    initialised Ray (and so shuts it down after the run)."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    start = time.perf_counter()
    context = ray.init(include_dashboard=False, runtime_env=runtime_env())
    have = ray.cluster_resources()
    address = (getattr(context, "address_info", None) or {}).get("address") or os.environ.get("RAY_ADDRESS")
    log(f"train: executor ray, cluster at {address}: {have.get('CPU', 0):.0f} CPUs, "
        f"{have.get('GPU', 0):.0f} GPUs (connected in {time.perf_counter() - start:.1f} s)")
    return True


def env_number(name: str, default: float, kind: type = int) -> float:
    value = os.environ.get(name, str(default))
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ParamsError(f"environment variable {name}={value!r}: expected a number >= 0 (default {default})")
    return number


def run_on_ray(jobs: list[GridJob], features: np.ndarray, log: Callable[[str], None],
               job_function: Callable = grid_job) -> Iterator[tuple[GridJob, StrategyResult]]:
    """Submit every job, then save and yield each as it finishes; raise at the end if any failed."""
    ray = ray_module()
    started = connect(log)
    try:
        cpus = max(1, int(env_number("XREFLECT_RAY_JOB_CPUS", 1)))
        gpus = env_number("XREFLECT_RAY_JOB_GPUS", 0, float)
        have = ray.cluster_resources()
        if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):  # no node could ever run a job
            raise ParamsError(f"XREFLECT_RAY_JOB_CPUS={cpus} / XREFLECT_RAY_JOB_GPUS={gpus:g}: the Ray cluster has "
                             f"{have.get('CPU', 0):.0f} CPUs and {have.get('GPU', 0):.0f} GPUs; ask for fewer per job")
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)(job_function)
        features_ref = ray.put(np.ascontiguousarray(features, dtype=np.float32))
        pending = {}
        for job in jobs:
            restored = {}
            for point in job.config.grid():
                loaded = job.store.load(point) if job.store is not None else None
                if loaded is not None:
                    restored[point] = loaded
            ref = remote.remote(Split.load(job.split_path), features_ref, job.config, restored, cpus, job.label,
                                job.full_k)
            pending[ref] = job
        log(f"train: {len(jobs)} grid job(s) submitted to Ray, {cpus} CPU(s) and {gpus:g} GPU(s) each")
        failed = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                result, points = ray.get(ready)
            except Exception as err:  # noqa: BLE001 - the other jobs go on; reported below
                cause = getattr(err, "cause", None) or err  # a job's own exception, not Ray's wrapper
                failed.append(f"{job.label}{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}")
                log(f"train: grid job failed: {failed[-1]}")
                continue
            if job.store is not None:
                for point, (point_result, state) in points.items():
                    job.store.save(point, point_result, state)
            yield job, result
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(jobs)} grid job(s) failed on Ray: {'; '.join(failed)}. "
                               "The finished jobs are in the checkpoint store; rerun the stage to train the rest")
    finally:
        if started:
            ray.shutdown()
