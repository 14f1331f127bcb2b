"""`dvc repro` end to end on a tiny demo configuration, in a throwaway copy of the repository.

Slow-ish (a few minutes on 2 cores): it runs every stage of dvc.yaml for real, with the offline
backbone and the packaged MiniLM, recording every file each stage reads (tests/support/audit), then checks
that each stage declares what it reads, no-op and selective reruns, `dvc metrics diff`, a strategy
added through params.yaml alone, and a subset of strategies.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AUDIT = Path(__file__).resolve().parent / "support" / "audit"
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
    "placement.dataset_overrides": {},  # one process per stage, as the ray comparison assumes
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
    env = {**os.environ, "XREFLECT_CACHE_DIR": str(work.parent / "cache"),
           "PYTHONPATH": os.pathsep.join([str(work), str(AUDIT)]),
           "XREFLECT_AUDIT_LOG": str(work.parent / "reads.log"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run("git", "init", "-q", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=work, env=env)
    log = run("dvc", "repro", cwd=work, env=env)
    return work, env, log


def test_repro_produces_metrics_for_every_strategy(project):
    work, _, _ = project
    summary = json.loads((work / "metrics/summary.json").read_text())
    run_list = yaml.safe_load((work / "params.yaml").read_text())["run"]
    assert set(run_list) | {"popularity_global", "full_ranking"} == set(summary)
    assert set(run_list) == set(summary["full_ranking"])  # the full-ranking protocol, every strategy
    for metrics in [*(m for s, m in summary.items() if s != "full_ranking"), *summary["full_ranking"].values()]:
        assert {"precision@10", "recall@10", "ndcg@10", "precision@1", "recall@1", "ndcg@1"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    report = (work / "metrics/report.md").read_text()
    assert "X-REFLECT-keyword" in report and "±" in report
    assert (work / "plots/similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (work / "plots/similarity.csv").read_text().splitlines()
    assert rows[0] == "item_id,strategy,reference_similarity,response_similarity" and len(rows) > 3


def declared_stages(work: Path) -> dict[str, dict]:
    """Each stage of dvc.yaml as DVC resolves it: its command, deps and outs."""
    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        return {stage.name: {"cmd": stage.cmd, "deps": [d.def_path for d in stage.deps],
                                   "outs": [o.def_path for o in stage.outs]} for stage in repo.index.stages}


def source_of(path: str) -> str:
    """The .py file a compiled module came from (imports read __pycache__/<name>.cpython-*.pyc)."""
    parts = Path(path).parts
    if "__pycache__" in parts and path.endswith(".pyc"):
        return str(Path(*parts[:-2], parts[-1].split(".")[0] + ".py"))
    return path


def is_package_marker(work: Path, path: str) -> bool:
    """An __init__.py with nothing but a docstring: reading it cannot change a stage's output."""
    if not path.endswith("__init__.py"):
        return False
    import ast

    body = ast.parse((work / path).read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_every_stage_declares_every_file_it_reads(project):
    work, _, _ = project
    stages = declared_stages(work)
    by_cmd = {info["cmd"].removeprefix("python "): name for name, info in stages.items()}
    reads: dict[str, set[str]] = {}
    for line in (work.parent / "reads.log").read_text().splitlines():
        command, path = line.split("\t")
        if command in by_cmd:
            reads.setdefault(by_cmd[command], set()).add(source_of(path))
    assert set(reads) == set(stages), "every stage ran under the audit"
    always = {"params.yaml", "dvc.yaml"}
    undeclared = {}
    for name, paths in reads.items():
        allowed = stages[name]["deps"] + stages[name]["outs"]
        missing = sorted(p for p in paths if p not in always and not is_package_marker(work, p)
                         and not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed))
        if missing:
            undeclared[name] = missing
    assert not undeclared, f"stages read files dvc.yaml does not list in their deps: {undeclared}"


def test_the_audit_sees_a_read_that_is_not_declared(project):
    """The check above can fail: the train stage reads its embeddings, and without them declared
    it would be flagged."""
    work, _, _ = project
    stages = declared_stages(work)
    lines = (work.parent / "reads.log").read_text().splitlines()
    train_text = stages["train@text"]["cmd"].removeprefix("python ")
    read = {line.split("\t")[1] for line in lines if line.split("\t")[0] == train_text}
    assert "data/embeddings/text/description.npy" in read
    assert "xreflect/training/grid.py" in {source_of(p) for p in read}


def ran_stages(log: str) -> set[str]:
    """The stages a `dvc repro` log says it ran (not those it skipped or restored)."""
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


def stale_stages(work: Path, env: dict) -> set[str]:
    status = run("dvc", "status", cwd=work, env=env)
    return {line.rstrip(":").strip() for line in status.splitlines()
            if line.endswith(":") and not line.startswith("\t")}


def edit_params(work: Path, change) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    change(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@contextlib.contextmanager
def params_restored(work: Path):
    """Give the next test the params this one found: an experiment in the workspace leaves its
    `-S` changes (a dataset, a backbone) in params.yaml."""
    before = (work / "params.yaml").read_text()
    try:
        yield
    finally:
        (work / "params.yaml").write_text(before)


def commit(work: Path, env: dict, message: str) -> None:
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=work, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, cwd=work, env=env)


def test_second_repro_does_nothing_and_a_param_reruns_only_its_dependents(project):
    work, env, _ = project
    assert "up to date" in run("dvc", "status", cwd=work, env=env)
    commit(work, env, "results")
    run("dvc", "repro", "-q", cwd=work, env=env)  # a no-op
    assert stale_stages(work, env) == set()

    edit_params(work, lambda p: p["analyze"].update(responses=["llm_rec", "cot"]))
    assert stale_stages(work, env) == {"similarity"}
    edit_params(work, lambda p: p["train"].update(max_epochs=5))
    run_list = yaml.safe_load((work / "params.yaml").read_text())["run"]
    # evaluate is not listed: its own deps (the models) change only once the train stages rerun
    assert stale_stages(work, env) == {"similarity"} | {f"train@{s}" for s in run_list}
    log = run("dvc", "repro", cwd=work, env=env)
    # What the change guarantees: every train stage reran under the new value and recorded it. Whether
    # a metric moves depends on where early stopping ended on this CPU, so no value is asserted.
    assert {f"train@{s}" for s in run_list} <= ran_stages(log)
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert all(lock[f"train@{s}"]["params"]["params.yaml"]["train"]["max_epochs"] == 5 for s in run_list)
    assert stale_stages(work, env) == set()
    diff = json.loads(run("dvc", "metrics", "diff", "--json", cwd=work, env=env).strip().splitlines()[-1])
    assert set(diff) <= {"metrics/summary.json", "metrics/similarity.json", "metrics/word_counts.json"}
    commit(work, env, "shorter training")


def test_ray_executor_gives_the_local_metrics(project):
    """placement.executor: ray on a local Ray started by each train stage, with a checkpoint store of its
    own so every grid point trains again: the same metrics as the local run above, bit for bit (the
    jobs run with the local run's torch thread count, so the reductions run in the same order).
    The executor only says where the work runs, so switching it leaves every stage up to date; the
    train stages are forced to rerun on Ray."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]' or -r requirements-ray.txt)")
    import torch  # noqa: PLC0415

    work, env, _ = project
    local = json.loads((work / "metrics/summary.json").read_text())
    edit_params(work, lambda p: p["placement"].update(executor="ray"))
    ray_env = {**env, "XREFLECT_CACHE_DIR": str(work.parent / "cache_ray"), "RAY_USAGE_STATS_ENABLED": "0",
               "XREFLECT_RAY_JOB_CPUS": str(torch.get_num_threads())}
    trains = sorted(name for name in declared_stages(work) if name.startswith("train@"))
    try:
        assert stale_stages(work, env) == set()  # not a train param in dvc.yaml: no rerun, no run-cache miss
        log = run("dvc", "repro", "--force", "--single-item", *trains, cwd=work, env=ray_env)
        log += run("dvc", "repro", cwd=work, env=ray_env)  # evaluate, if any train out changed
        with_ray = json.loads((work / "metrics/summary.json").read_text())
    finally:
        edit_params(work, lambda p: p["placement"].update(executor="local"))
    run("dvc", "repro", "-q", cwd=work, env=env)  # back to the local run's outs (DVC's run-cache)
    assert stale_stages(work, env) == set()
    assert "train: executor ray, cluster at " in log and "grid job(s) submitted to Ray" in log
    assert with_ray == local


def test_a_strategy_added_in_params_alone_trains_and_is_reported(project):
    work, env, _ = project
    def add(p):
        p["strategies"]["text_cot"] = ["description", "cot"]
        p["run"].append("text_cot")
    edit_params(work, add)
    assert stale_stages(work, env) >= {"generate@text_cot", "embed", "train@text_cot", "evaluate"}
    log = run("dvc", "repro", cwd=work, env=env)
    # the one embed stage reran for the new strategy, but every other strategy's embeddings came out
    # byte-identical, so no other strategy trained again
    assert {name for name in ran_stages(log) if name.startswith("train@")} == {"train@text_cot"}
    assert "[cot] " in log and "0 to generate" in log  # CoT's answers come from the shared cache
    summary = json.loads((work / "metrics/summary.json").read_text())
    assert 0.0 <= summary["text_cot"]["recall@10"] <= 1.0
    assert "| text_cot |" in (work / "metrics/report.md").read_text()
    commit(work, env, "text_cot")


def test_a_subset_of_strategies_runs_exactly_those(project):
    work, env, _ = project
    edit_params(work, lambda p: p.update(run=["text", "xreflect"]))
    assert {name for name in declared_stages(work) if "@" in name} == {
        f"{kind}@{s}" for kind in ("generate", "train") for s in ("text", "xreflect")}
    run("dvc", "repro", cwd=work, env=env)
    summary = json.loads((work / "metrics/summary.json").read_text())
    assert set(summary) == {"text", "xreflect", "full_ranking"}
    assert set(summary["full_ranking"]) == {"text", "xreflect"}
    similarity = json.loads((work / "metrics/similarity.json").read_text())
    assert similarity["left_out"] == ["visual_only", "llm_rec", "cot"]  # no strategy in run embeds them


def every_out_exists(work: Path) -> list[str]:
    """The outs of every stage in dvc.yaml that are missing from the workspace."""
    return [f"{name}: {out}" for name, info in declared_stages(work).items()
            for out in info["outs"] if not (work / out).exists()]


@pytest.mark.parametrize("subset", [["popularity", "text"], ["text"], ["xreflect"], ["text", "cot", "text_image"]],
                         ids=lambda s: "+".join(s))
def test_a_run_subset_ends_with_rc_0_and_every_stage_accounted_for(project, subset):
    """What a researcher without an API key tries first: `dvc exp run -S 'run=[...]'`. Every stage
    either writes its outs or says why it has nothing to show, and the experiment is kept."""
    work, env, _ = project
    name = "subset-" + "-".join(subset).replace("_", "")
    log = run("dvc", "exp", "run", "-n", name, "-S", f"run=[{','.join(subset)}]", cwd=work, env=env)
    assert every_out_exists(work) == []
    summary = json.loads((work / "metrics/summary.json").read_text())
    assert set(summary) - {"full_ranking", "popularity_global"} == set(subset)
    uses_prompt = any(s not in ("popularity", "text", "text_image") for s in subset)
    if not uses_prompt:
        assert "no strategy in `run`" in log and "uses a prompt" in log          # the gallery says why
        assert "descriptions only" in (work / "reports/gallery.html").read_text()
    similarity = json.loads((work / "metrics/similarity.json").read_text())
    if "cot" not in subset and "xreflect" not in subset:
        assert similarity.get("left_out")                                      # Figure 3 says what it lacks
    assert name in run("dvc", "exp", "show", "--no-pager", "--csv", cwd=work, env=env)


def test_a_backbone_switch_runs_against_an_openai_compatible_server(project):
    """`dvc exp run -S backbone=gpt4v` with the OpenAI provider, against a fake server on 127.0.0.1:
    the generate stages send their requests there and the experiment ends with rc 0."""
    from tests.support.fake_openai_server import FakeOpenAI  # noqa: PLC0415

    work, env, _ = project
    with FakeOpenAI() as server, params_restored(work):
        gpt_env = {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test-key"}
        run("dvc", "exp", "run", "-n", "gpt4v-fake", "-S", "backbone=gpt4v", "-S", "run=[text,llm_rec]",
            cwd=work, env=gpt_env)
        n_items = len((work / "data/filtered/items.jsonl").read_text().splitlines())
        assert len(server.chat_requests) == n_items                      # one LLM-Rec request per item
        assert {body["model"] for body in server.chat_requests} == {"gpt-4o-2024-08-06"}
        assert every_out_exists(work) == []
        usage = json.loads((work / "metrics/generate/llm_rec.json").read_text())["llm_rec"]
        assert usage["backbone"] == "gpt4v" and usage["responses"] == n_items and usage["cost_usd"] > 0
        assert set(json.loads((work / "metrics/summary.json").read_text())) == {"text", "llm_rec", "full_ranking"}


def test_a_param_sweep_through_the_dvc_queue(project):
    """Two queued experiments, run by DVC's queue workers, each kept with its own params."""
    work, env, _ = project
    for dropout in ("0.1", "0.3"):
        run("dvc", "exp", "run", "--queue", "-n", f"sweep-{dropout.replace('.', '')}", "-S", "run=[popularity,text]",
            "-S", f"train.dropout=[{dropout}]", cwd=work, env=env)
    run("dvc", "queue", "start", "-j", "1", cwd=work, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run("dvc", "queue", "status", cwd=work, env=env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") >= 2, status
    shown = run("dvc", "exp", "show", "--no-pager", "--csv", cwd=work, env=env)
    assert "sweep-01" in shown and "sweep-03" in shown, shown[-2000:]


def test_another_dataset_entry_runs_from_a_local_mirror(project, tmp_path):
    """`dvc exp run -S dataset=movielens-1m` at a tiny scale: a MovieLens-shaped ml-1m.zip and its
    posters in a local mirror (the route README gives for a machine without access to GroupLens),
    pinned by their own digests; one movie has no poster and stays in as text-only."""
    from tests.support.fixtures.datasets import image_bytes, synthetic_ml1m  # noqa: PLC0415

    work, env, _ = project
    archive = synthetic_ml1m(n_users=50, n_movies=60, per_user=(20, 35), seed=4)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ml-1m.zip").write_bytes(archive)
    for movie_id in range(2, 61):  # movie 1, the most rated, has no poster
        (mirror / f"{movie_id}.jpg").write_bytes(image_bytes("JPEG", (movie_id * 4, 90, 250 - movie_id * 4), 32))
    entry = "datasets.movielens-1m"
    with params_restored(work):
        run("dvc", "exp", "run", "-n", "ml1m-mirror", "-S", "dataset=movielens-1m", "-S", "run=[popularity,text,xreflect]",
            "-S", f"{entry}.mirror_dir={mirror}", "-S", f"{entry}.archive.sha256={hashlib.sha256(archive).hexdigest()}",
            "-S", f"{entry}.archive.md5={hashlib.md5(archive).hexdigest()}", "-S", f"{entry}.descriptions.table=null",
            "-S", f"{entry}.posters.manifest=null", "-S", f"{entry}.eval_negatives=20",
            "-S", "generate.max_missing_images=0.05", cwd=work, env=env)  # 1 of 50 movies: 2%, above the 1% default
        assert every_out_exists(work) == []
        data = json.loads((work / "metrics/data.json").read_text())
        assert data["source"]["archive"]["sha256"] == hashlib.sha256(archive).hexdigest()
        items = [json.loads(line) for line in (work / "data/filtered/items.jsonl").read_text().splitlines()]
        assert {item["item_id"] for item in items if item["image"] is None} == {"1"}
        assert all("Film Nº" in item["title"] for item in items)
        summary = json.loads((work / "metrics/summary.json").read_text())
        assert set(summary) - {"full_ranking", "popularity_global"} == {"popularity", "text", "xreflect"}
        assert json.loads((work / "metrics/splits.json").read_text())["eval_negatives"] == 20


def test_the_other_eval_negatives_mode_reruns_from_split_and_a_stale_split_is_refused(project):
    """The demo under the mode the defaults do not use: split, train and evaluate rerun, the split
    files carry the new mode, and a split left from the other mode stops the stages with the fix."""
    from xreflect.data.split import Split  # noqa: PLC0415

    work, env, _ = project
    default = yaml.safe_load((work / "params.yaml").read_text())["split"].get("eval_negatives", "shared")
    other = {"shared": "disjoint", "disjoint": "shared"}[default]
    def switch(params):
        params["run"] = ["popularity", "text"]
        params["split"]["eval_negatives"] = other
    edit_params(work, switch)
    stale = stale_stages(work, env)
    assert {"split", "train@popularity", "train@text", "evaluate"} <= stale
    run("dvc", "repro", "-q", cwd=work, env=env)
    assert json.loads((work / "metrics/splits.json").read_text())["eval_negatives_mode"] == other
    split = Split.load(work / "data/splits/split_0.npz", other)
    same = np.array_equal(split.valid_negatives, split.test_negatives)
    assert same == (other == "shared")
    if other == "disjoint":
        for valid, test in zip(split.valid_negatives, split.test_negatives):
            assert not set(valid[valid >= 0].tolist()) & set(test[test >= 0].tolist())
    summary = json.loads((work / "metrics/summary.json").read_text())
    assert set(summary) == {"popularity", "popularity_global", "text", "full_ranking"}
    assert json.loads((work / "metrics/detail.json").read_text())["eval_negatives_mode"] == other

    edit_params(work, lambda p: p["split"].update(eval_negatives=default))  # the splits are now stale
    for module, args in (("stages.train", ["--strategy", "text"]), ("stages.evaluate", [])):
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 4, result.stderr[-2000:]  # xreflect.core.errors.EXIT_DATA
        assert "split_0.npz: split drawn with split.eval_negatives=" + other in result.stderr
        assert "dvc repro -f split" in result.stderr
