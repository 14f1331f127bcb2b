"""placement.workers: the local executor trains a strategy's grid jobs side by side in several
processes and gives each job the result it gets alone at the same thread count, bit for bit,
saving every job's points in its checkpoint store; a job that fails in a worker fails the run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xreflect.core.errors import DataError
from xreflect.data.split import make_split
from xreflect.training.config import PLACEMENT_KEYS, TrainConfig
from xreflect.training.executor import GridJob, run_grid_jobs
from xreflect.training.side_by_side import start_method
from xreflect.training.store import DirectoryStore

from tests.training.test_train import SMALL, planted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def split_files(tmp_path: Path, n: int = 4) -> tuple[list[Path], np.ndarray]:
    base, feats = planted(n_users=80, n_items=100, d=16, seed=2)
    pairs = np.concatenate([base.train, base.valid, base.test])
    paths = []
    for k in range(n):
        paths.append(tmp_path / f"split_{k}.npz")
        make_split(pairs, base.n_users, base.n_items, (8, 1, 1), 30, k).save(paths[-1])
    return paths, feats


def jobs_for(paths: list[Path], config: TrainConfig, store_root: Path | None = None) -> list[GridJob]:
    return [GridJob(k, f"split {k + 1}/{len(paths)}: ", path, config,
                    None if store_root is None else DirectoryStore(store_root / str(k)), full_k=10)
            for k, path in enumerate(paths)]


def small_config(**changes) -> TrainConfig:
    return replace(TrainConfig.from_params({**SMALL, "lr": [0.01, 0.002], "dropout": [0.1, 0.5], "max_epochs": 10}),
                   **changes)


def assert_same_results(serial: dict, side: dict) -> None:
    assert sorted(serial) == sorted(side)
    for k in serial:
        a, b = serial[k], side[k]
        assert a.chosen == b.chosen
        assert [p.curve for p in a.points] == [p.curve for p in b.points]
        for name in ("test_scores", "valid_scores", "full_test_top"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_side_by_side_jobs_equal_the_serial_run_bit_for_bit_and_fill_the_store(tmp_path):
    paths, feats = split_files(tmp_path)
    serial = {job.index: result for job, result in run_grid_jobs(jobs_for(paths, small_config()), feats, "local")}
    lines: list[str] = []
    side = {}
    for job, result in run_grid_jobs(jobs_for(paths, small_config(workers=2), tmp_path / "store"), feats, "local",
                                     lines.append):
        side[job.index] = result
    assert any("4 grid jobs on 2 processes side by side" in line for line in lines)
    assert_same_results(serial, side)
    assert torch.get_num_threads() == 1  # the stage's own thread count is restored afterwards
    # every job's points are in its store, whichever process trained it: a rerun trains nothing
    lines.clear()
    again = {job.index: result for job, result in
             run_grid_jobs(jobs_for(paths, small_config(workers=2), tmp_path / "store"), feats, "local", lines.append)}
    assert_same_results(serial, again)


def test_more_workers_than_jobs_and_one_job_stay_correct(tmp_path):
    paths, feats = split_files(tmp_path, n=2)
    serial = {job.index: result for job, result in run_grid_jobs(jobs_for(paths, small_config()), feats, "local")}
    side = {job.index: result for job, result in run_grid_jobs(jobs_for(paths, small_config(workers=5)), feats, "local")}
    assert_same_results(serial, side)
    one = list(run_grid_jobs(jobs_for(paths[:1], small_config(workers=3)), feats, "local"))
    assert_same_results({0: serial[0]}, {job.index: result for job, result in one})


def test_workers_of_several_threads_are_spawned_and_equal_the_serial_run_at_that_thread_count(tmp_path):
    paths, feats = split_files(tmp_path, n=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the serial reference: the thread count each worker gets below
    try:
        serial = {job.index: result for job, result in run_grid_jobs(jobs_for(paths, small_config()), feats, "local")}
        torch.set_num_threads(4)  # 2 workers x 2 threads: spawned, not forked
        lines: list[str] = []
        side = {job.index: result for job, result in
                run_grid_jobs(jobs_for(paths, small_config(workers=2)), feats, "local", lines.append)}
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
    assert any("on 2 processes side by side (placement.workers), 2 torch thread(s) each" in line for line in lines)
    assert_same_results(serial, side)


def test_a_failing_job_fails_the_run_whichever_process_trains_it(tmp_path):
    paths, feats = split_files(tmp_path, n=3)
    paths[-1].write_bytes(b"not an npz")  # taken by whichever process is free after the first two
    with pytest.raises(DataError, match=r"split_2.npz: not a readable split .*dvc repro -f split"):
        list(run_grid_jobs(jobs_for(paths, small_config(workers=2)), feats, "local"))


def test_a_worker_reports_its_failure_and_starts_no_further_job(tmp_path):
    import multiprocessing

    from xreflect.training.side_by_side import _work

    paths, feats = split_files(tmp_path, n=3)
    paths[0].write_bytes(b"not an npz")
    next_job, results = multiprocessing.Value("i", 0), multiprocessing.Queue()
    _work(jobs_for(paths, small_config()), feats, 1, next_job, results)  # here, as a worker runs it
    index, outcome = results.get(timeout=10)
    assert index == 0 and isinstance(outcome, DataError) and "split_0.npz" in str(outcome)
    assert next_job.value == 1 and results.empty()  # jobs 1 and 2 are left to the others


def test_workers_is_a_placement_key_and_a_positive_integer():
    assert "workers" in PLACEMENT_KEYS  # it never changes results: not in dvc.yaml's train params
    assert TrainConfig.from_params({"workers": 3}).workers == 3
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="placement.workers must be a positive integer"):
            TrainConfig.from_params({"workers": bad})


def test_one_thread_workers_fork_and_several_thread_workers_spawn():
    assert start_method(1) in ("fork", "spawn")  # fork on Linux
    assert start_method(2) == "spawn"
