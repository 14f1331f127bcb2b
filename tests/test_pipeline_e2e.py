"""`dvc repro` end to end on a tiny demo configuration, in a throwaway copy of the repository.

Slow-ish (about two minutes on 2 cores): it runs every stage of dvc.yaml for real, with the
offline backbone and the packaged MiniLM, then checks no-op reruns, selective reruns and
`dvc metrics diff`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "datasets.demo.eval_negatives": 30,
    "datasets.demo.generator": {"seed": 3, "n_users": 60, "n_items": 90, "image_size": 48},
    "split.n_splits": 2,
    "train.lr": [0.001],
    "train.dropout": [0.1, 0.3],
    "train.item_hidden": [32],
    "train.max_epochs": 10,
    "train.batch_size": 512,
    "train.dataset_overrides": {},
}


def run(*cmd: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def set_param(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        params = params[key]
    params[last] = value


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("data/", "models/", "metrics/", "plots/")):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for dotted, value in TINY.items():
        set_param(params, dotted, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for lock in ("dvc.lock",):
        (work / lock).unlink(missing_ok=True)
    env = {**os.environ, "XREFLECT_CACHE_DIR": str(work.parent / "cache"), "PYTHONPATH": str(work),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run("git", "init", "-q", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=work, env=env)
    log = run("dvc", "repro", cwd=work, env=env)
    return work, env, log


def test_repro_produces_metrics_for_every_strategy(project):
    work, _, _ = project
    summary = json.loads((work / "metrics/summary.json").read_text())
    strategies = yaml.safe_load((work / "params.yaml").read_text())["strategies"]
    assert set(strategies) | {"popularity_global", "full_ranking"} == set(summary)
    assert set(strategies) == set(summary["full_ranking"])
    for metrics in [*(m for s, m in summary.items() if s != "full_ranking"), *summary["full_ranking"].values()]:
        assert {"precision@10", "recall@10", "ndcg@10", "precision@1", "recall@1", "ndcg@1"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    report = (work / "metrics/report.md").read_text()
    assert "X-REFLECT-keyword" in report and "±" in report
    assert (work / "plots/similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (work / "plots/similarity.csv").read_text().splitlines()
    assert rows[0] == "item_id,strategy,reference_similarity,response_similarity" and len(rows) > 3


def stale_stages(work: Path, env: dict) -> set[str]:
    status = run("dvc", "status", cwd=work, env=env)
    return {line.rstrip(":").strip() for line in status.splitlines()
            if line.endswith(":") and not line.startswith("\t")}


def edit_params(work: Path, change) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    change(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_second_repro_does_nothing_and_a_param_reruns_only_its_dependents(project):
    work, env, _ = project
    assert "up to date" in run("dvc", "status", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", cwd=work, env=env)
    run("dvc", "repro", "-q", cwd=work, env=env)  # a no-op
    assert stale_stages(work, env) == set()

    edit_params(work, lambda p: p["analyze"].update(responses=["llm_rec", "cot"]))
    assert stale_stages(work, env) == {"similarity"}
    edit_params(work, lambda p: p["train"].update(max_epochs=5))
    strategies = yaml.safe_load((work / "params.yaml").read_text())["strategies"]
    # evaluate is not listed: its own deps (the models) change only once the train stages rerun
    assert stale_stages(work, env) == {"similarity"} | {f"train_{s}" for s in strategies}
    run("dvc", "repro", "-q", cwd=work, env=env)
    diff = json.loads(run("dvc", "metrics", "diff", "--json", cwd=work, env=env).strip().splitlines()[-1])
    rows = diff["metrics/summary.json"]
    strategies = yaml.safe_load((work / "params.yaml").read_text())["strategies"]
    assert {f"{s}.recall@10" for s in strategies if s != "popularity"} <= set(rows)  # one row per strategy x metric
    assert set(rows["text.recall@10"]) >= {"old", "new"}


def test_a_strategy_reading_an_undeclared_file_is_refused(project):
    work, env, _ = project
    edit_params(work, lambda p: p["strategies"].update(text=["description", "image"]))
    result = subprocess.run(["dvc", "repro", "-q", "train_text"], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "stage 'train_text' reads ['data/embeddings/image.npy'] but does not list them" in result.stderr
