"""What the train stage depends on in dvc.yaml: the `train` section whole (every key there changes
results) and nothing of `placement` (PLACEMENT_KEYS: where the work runs), so that switching e.g.
placement.executor neither reruns the stage nor misses DVC's run-cache."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from xreflect.training.config import PLACEMENT_KEYS, TrainConfig, train_config

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def stage_params() -> dict[str, list[str]]:
    """Every dvc.yaml stage's `params:` keys (an entry is a key, or {file: [keys]})."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        keys = []
        for entry in stage.get("do", stage).get("params", []):
            keys += [entry] if isinstance(entry, str) else [k for ks in entry.values() for k in ks]
        found[name] = keys
    return found


def train_stage_params() -> list[str]:
    """The `params:` of the dvc.yaml stage whose command runs stages.train (plain or foreach)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    names = [name for name, stage in stages.items() if "stages.train " in stage.get("do", stage).get("cmd", "") + " "]
    assert len(names) == 1, "dvc.yaml should have one stage running `python -m stages.train`"
    return stage_params()[names[0]]


def test_the_train_stage_depends_on_the_train_section_whole_and_no_stage_on_placement():
    assert "train" in train_stage_params(), "dvc.yaml: the train stage should list the whole `train` section"
    for stage, keys in stage_params().items():
        placed = [k for k in keys if k == "placement" or k.startswith("placement.")]
        assert not placed, (f"dvc.yaml: stage {stage} lists {placed[0]}, which only says where the work runs; "
                            "a change to it would rerun the stage and miss DVC's run-cache")


def test_params_yaml_keeps_result_keys_under_train_and_placement_keys_under_placement():
    names = {f.name for f in fields(TrainConfig)}
    train, placement = set(PARAMS["train"]) - {"dataset_overrides"}, set(PARAMS["placement"]) - {"dataset_overrides"}
    assert train <= names - set(PLACEMENT_KEYS), f"params.yaml: train holds {sorted(train & set(PLACEMENT_KEYS))}"
    assert placement == set(PLACEMENT_KEYS)
    for overrides, allowed in ((PARAMS["train"].get("dataset_overrides"), train),
                               (PARAMS["placement"].get("dataset_overrides"), placement)):
        for dataset, keys in (overrides or {}).items():
            assert set(keys) <= allowed, f"params.yaml: dataset_overrides.{dataset} holds {sorted(set(keys) - allowed)}"


def test_placement_keys_are_real_keys_and_stay_out_of_the_checkpoint_key():
    names = {f.name for f in fields(TrainConfig)}
    assert set(PLACEMENT_KEYS) <= names
    # A grid point's checkpoint key holds every result-changing key but the grid lists themselves.
    assert set(TrainConfig().point_params()) == names - set(PLACEMENT_KEYS) - {"lr", "dropout"}


def test_the_demo_places_its_splits_on_two_workers_and_a_users_value_wins():
    config, applied = train_config({**PARAMS, "dataset": "demo"})
    assert config.workers == 2 and applied["workers"] == 2
    assert train_config({**PARAMS, "dataset": "movielens-1m"})[0].workers == 1
    ray = {**PARAMS, "dataset": "demo", "placement": {**PARAMS["placement"], "executor": "ray"}}
    assert train_config(ray)[0].executor == "ray"
    # a section without a key gets its default
    assert train_config({**PARAMS, "placement": {"workers": 3}})[0].stack_splits is False


@pytest.mark.parametrize("key", PLACEMENT_KEYS)
def test_a_placement_key_under_train_says_where_it_now_lives(key):
    value = {"executor": "ray", "workers": 2, "stack_splits": True}[key]
    for params in ({**PARAMS, "train": {**PARAMS["train"], key: value}},
                   {**PARAMS, "train": {**PARAMS["train"], "dataset_overrides": {"demo": {key: value}}}}):
        with pytest.raises(ValueError, match=rf"train\.{key} is now placement\.{key}.*-S placement\.{key}="):
            train_config(params)


def test_a_result_key_under_placement_is_refused():
    with pytest.raises(ValueError, match=r"placement\.lr is not a placement key .* go under `train:`"):
        train_config({**PARAMS, "placement": {**PARAMS["placement"], "lr": [0.1]}})
    with pytest.raises(ValueError, match=r"placement\.dataset_overrides\.demo\.lr is not a key of 'placement'"):
        train_config({**PARAMS, "dataset": "demo", "placement": {"dataset_overrides": {"demo": {"lr": [0.1]}}}})
    with pytest.raises(ValueError, match=r"placement must be a mapping of executor"):
        train_config({**PARAMS, "placement": "ray"})
