"""params.yaml survives DVC's own rewrite: `dvc exp run -S` applies overrides to the file with
ruamel, and some layouts (flow lists followed by trailing comments) come back corrupted on the
second override. Applying several overrides in a row must keep the file readable and correct."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

ROOT = Path(__file__).resolve().parents[2]

SEQUENCES = [
    ["train.lr=[0.001]", "train.item_hidden=[]", "train.dropout=[0.1,0.3]"],
    ["dataset=movielens-1m", "backbone=gpt4v", "train.item_hidden=[64]"],
    ["run=[text,xreflect]", "split.n_splits=2", "evaluate.ks=[1,5,10]"],
    ["datasets.demo.split_ratio=[6,2,2]", "generate.max_failures=0.1", "train.max_epochs=3"],
]


@pytest.mark.parametrize("overrides", SEQUENCES, ids=lambda s: s[0])
def test_overrides_in_a_row_keep_params_readable(tmp_path, overrides):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    original = yaml.safe_load(path.read_text())
    for override in overrides:  # one `dvc exp run -S` after another, as a user would
        apply_overrides(str(path), [override])
        yaml.safe_load(path.read_text())
    params = yaml.safe_load(path.read_text())
    for override in overrides:
        key, value = override.split("=", 1)
        node = params
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value.replace(",", ", "))
    untouched = {k for k in original if not any(o.startswith(k) for o in overrides)}
    assert all(params[k] == original[k] for k in untouched)
