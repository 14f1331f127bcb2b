"""Every params mistake a user can make reaches them as one line that names the key, with exit code 3.

Each case sets one bad value in a small demo project and runs the stage that reads it, the way
`dvc repro` would; the stage's error must be one the entry wrapper (xreflect.core.cli.run_stage)
turns into a message and exit code 3, never a traceback. Two cases also run as real processes.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xreflect.core.cli import exit_code_of, message_of
from xreflect.core.errors import EXIT_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())

# (stage run as `python -m stages.<stage>`, its arguments, dotted key, bad value, text the message must hold)
CASES = [
    ("download", [], "dataset", "movielens-10m", "dataset"),
    ("download", [], "datasets.demo.generator.n_items", 3, "datasets.demo.generator"),
    ("download", [], "datasets.demo.source", "imdb", "source"),
    ("filter", [], "datasets.demo.min_interactions", 0, "min_interactions"),
    ("split", [], "split.n_splits", 0, "split.n_splits"),
    ("generate", ["--strategy", "cot"], "backbone", "gpt5", "backbone"),
    ("generate", ["--strategy", "cot"], "backbones.offline.provider", "bogus", "backbones.offline.provider"),
    ("generate", ["--strategy", "cot"], "generate.max_missing_images", 2, "generate.max_missing_images"),
    ("generate", ["--strategy", "cot"], "generate.separate_inputs.r_image", "visual", "separate_inputs.r_image"),
    ("generate", ["--strategy", "cot"], "strategies.cot", ["description", "cott"], "strategies.cot"),
    ("embed", [], "strategies.text", ["description", "nope"], "strategies.text"),
    ("train", ["--strategy", "text"], "train.normalize_sources", "maybe", "train.normalize_sources"),
    ("train", ["--strategy", "text"], "placement.executor", "spark", "placement.executor"),
    ("train", ["--strategy", "text"], "train.workers", 2, "placement.workers"),  # the key's old home
    ("train", ["--strategy", "text"], "placement.lr", [0.1], "placement.lr"),
    ("train", ["--strategy", "text"], "train.precision", "fp8", "train.precision"),
    ("train", ["--strategy", "text"], "train.item_hidden", [512, -1], "train.item_hidden"),
    ("train", ["--strategy", "text"], "train.lr", [], "train.lr"),
    ("train", ["--strategy", "text"], "train.optimizer", "sgd", "train.optimizer"),
    ("train", ["--strategy", "nope"], "run", ["text"], "nope"),
    ("evaluate", [], "evaluate.baseline", "text_imag", "evaluate.baseline"),
    ("evaluate", [], "run", ["text", "nope"], "nope"),
    ("gallery", [], "gallery.items", 0, "gallery.items"),
]


def set_value(params: dict, dotted: str, value) -> dict:
    params = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small demo with its dataset, filtered items and splits in place (what later stages read)."""
    root = tmp_path_factory.mktemp("project")
    params = set_value(SHIPPED, "datasets.demo.generator", {"seed": 7, "n_users": 40, "n_items": 40, "image_size": 32})
    params = set_value(params, "split.n_splits", 1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "filter", "split"):
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
    return root, params


@pytest.mark.parametrize("stage, args, key, value, named", CASES, ids=[f"{c[0]}:{c[2]}={c[3]}" for c in CASES])
def test_a_params_mistake_is_one_line_and_exit_code_3(project, monkeypatch, stage, args, key, value, named):
    root, params = project
    monkeypatch.chdir(root)
    monkeypatch.setattr("xreflect.core.config.PARAMS_FILE", root / "params.yaml")
    bad = set_value(params, key, value)
    monkeypatch.setattr(f"stages.{stage}.load_params", lambda *a: copy.deepcopy(bad))
    main = importlib.import_module(f"stages.{stage}").main
    with pytest.raises(BaseException) as caught:
        main(args) if inspect.signature(main).parameters else main()
    assert exit_code_of(caught.value) == EXIT_PARAMS, f"{type(caught.value).__name__}: {caught.value}"
    message = message_of(caught.value)
    assert "\n" not in message.strip() and named in message


@pytest.mark.parametrize("stage, args, key, value", [("train", ["--strategy", "text"], "placement.executor", "spark"),
                                                      ("filter", [], "datasets.demo.min_interactions", 0)])
def test_the_stage_process_prints_one_line_and_exits_3(project, tmp_path, stage, args, key, value):
    root, params = project
    (root / "params.yaml").write_text(yaml.safe_dump(set_value(params, key, value), sort_keys=False))
    try:
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=root, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert done.returncode == EXIT_PARAMS
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if key.rsplit(".", 1)[-1] in line]
