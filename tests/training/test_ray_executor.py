"""placement.executor: ray gives what local gives, survives a dying worker, and keeps finished jobs.

A local Ray with 2 CPUs; the grid jobs run single-threaded both ways, so the results are
bit-identical (same thread count, same reduction order)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from xreflect.training.config import TrainConfig
from xreflect.training.executor import GridJob, run_grid_jobs
from xreflect.training.store import DirectoryStore

from tests.training.test_train import SMALL, planted, quiet

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]' or -r requirements-ray.txt)")
ray_jobs = pytest.importorskip("xreflect.training.ray_jobs")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TrainConfig.from_params({**SMALL, "lr": [0.01, 0.003], "dropout": [0.1, 0.5], "max_epochs": 15,
                                  "patience": 1, "precision": "fp32"})


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=ray_jobs.runtime_env(),
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two splits of a small planted problem (one grid job each) and their features."""
    root = tmp_path_factory.mktemp("splits")
    _, feats = planted(n_users=80, n_items=100, d=16)
    paths = []
    for k in range(2):
        split, _ = planted(n_users=80, n_items=100, d=16, seed=k)
        paths.append(root / f"split_{k}.npz")
        split.save(paths[-1])
    return paths, feats


def jobs(paths: list[Path], store_root: Path | None) -> list[GridJob]:
    return [GridJob(k, f"split {k}: ", path, CONFIG, None if store_root is None else DirectoryStore(store_root / str(k)))
            for k, path in enumerate(paths)]


def run(paths, feats, executor, store_root=None, **kwargs) -> dict:
    if executor == "ray":
        finished = ray_jobs.run_on_ray(jobs(paths, store_root), feats, quiet, **kwargs)
    else:
        finished = run_grid_jobs(jobs(paths, store_root), feats, "local", quiet)
    return {job.index: result for job, result in finished}


def without_seconds(value):
    """Everything but wall times, which no two runs share."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].chosen == b[k].chosen
        assert without_seconds(a[k].selection()) == without_seconds(b[k].selection())
        np.testing.assert_array_equal(a[k].test_scores, b[k].test_scores)
        np.testing.assert_array_equal(a[k].valid_scores, b[k].valid_scores)


def store_contents(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*.npz")):
        with np.load(path) as data:
            out[str(path.relative_to(root))] = {name: data[name].tolist() for name in data.files if name != "result"}
            out[str(path.relative_to(root))]["result"] = without_seconds(json.loads(str(data["result"])))
    return out


@pytest.fixture(scope="module")
def local_results(inputs, tmp_path_factory):
    paths, feats = inputs
    root = tmp_path_factory.mktemp("local_store")
    return run(paths, feats, "local", root), root


def test_ray_equals_local_results_and_checkpoint_store(local_ray, inputs, local_results, tmp_path):
    paths, feats = inputs
    local, local_store = local_results
    assert_same(run(paths, feats, "ray", tmp_path), local)
    assert store_contents(tmp_path) == store_contents(local_store)


def test_a_dead_worker_loses_only_its_job_which_ray_retries(local_ray, inputs, local_results, tmp_path):
    paths, feats = inputs
    marker = tmp_path / "died"

    def dies_once(split, features, config, restored, threads, label, full_k=None):
        if label == "split 1: " and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-job, as on a lost node
        return ray_jobs.grid_job(split, features, config, restored, threads, label, full_k)

    results = run(paths, feats, "ray", tmp_path / "store", job_function=dies_once)
    assert marker.exists()
    assert_same(results, local_results[0])


def test_finished_jobs_are_kept_and_a_failed_job_is_reported_after_the_others(local_ray, inputs, local_results,
                                                                               tmp_path):
    paths, feats = inputs

    def split_1_fails(split, features, config, restored, threads, label, full_k=None):
        if label == "split 1: ":
            raise ValueError("broken input")
        return ray_jobs.grid_job(split, features, config, restored, threads, label, full_k)

    finished = []
    with pytest.raises(RuntimeError, match=r"1 of 2 grid job\(s\) failed on Ray: split 1: .*broken input"):
        for job, _ in ray_jobs.run_on_ray(jobs(paths, tmp_path), feats, quiet, job_function=split_1_fails):
            finished.append(job.index)
    assert finished == [0]
    assert len(list((tmp_path / "0").glob("*.npz"))) == len(CONFIG.grid())
    assert not (tmp_path / "1").exists()

    # The rerun sends split 0 its finished points: it only selects and scores, training nothing.
    def must_not_retrain_split_0(split, features, config, restored, threads, label, full_k=None):
        if label != "split 0: ":
            return ray_jobs.grid_job(split, features, config, restored, threads, label, full_k)
        assert len(restored) == len(config.grid())
        import xreflect.training.grid as grid  # noqa: PLC0415
        real, grid.train_points = grid.train_points, lambda *a, **k: pytest.fail("retrained split 0")
        try:
            return ray_jobs.grid_job(split, features, config, restored, threads, label, full_k)
        finally:
            grid.train_points = real

    assert_same(run(paths, feats, "ray", tmp_path, job_function=must_not_retrain_split_0), local_results[0])


def test_train_stage_writes_the_same_outs_with_ray(local_ray, tmp_path, monkeypatch):
    """stages/train.py end to end, local then ray (each with a checkpoint store of its own, so both
    train every point): identical score files and the same selection."""
    import stages.train as stage  # noqa: PLC0415
    from tests.training.test_train import write_stage_inputs  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    write_stage_inputs(tmp_path, {"text_image": ["description", "image"]},
                       {**SMALL, "lr": [0.01], "dropout": [0.1, 0.3], "max_epochs": 10})
    outs = {}
    for executor in ("local", "ray"):
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params.setdefault("placement", {})["executor"] = executor
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / f"cache_{executor}"))
        stage.main(["--strategy", "text_image"])
        with np.load(tmp_path / "models/text_image/split_0.npz") as data:
            scores = {name: data[name] for name in data.files}
        selection = json.loads((tmp_path / "models/text_image/selection.json").read_text())
        outs[executor] = scores, without_seconds(selection)
    for name in outs["local"][0]:
        np.testing.assert_array_equal(outs["ray"][0][name], outs["local"][0][name])
    assert outs["ray"][1] == outs["local"][1]
