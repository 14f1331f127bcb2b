"""Which `train` keys the train stage depends on in dvc.yaml: every key that changes results, and
none of those that only change where the work runs (PLACEMENT_KEYS), so that switching e.g.
train.executor neither reruns the stage nor misses DVC's run-cache."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from xreflect.training.config import PLACEMENT_KEYS, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def train_stage_params() -> list[str]:
    """The `params:` of the dvc.yaml stage whose command runs stages.train (plain or foreach)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = [stage.get("do", stage) for stage in stages.values()
             if "stages.train " in stage.get("do", stage).get("cmd", "") + " "]
    assert len(found) == 1, "dvc.yaml should have one stage running `python -m stages.train`"
    params = []
    for entry in found[0].get("params", []):  # an entry is a key, or {file: [keys]}
        params += [entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys]
    return params


def section_keys() -> set[str]:
    """Every key the `train` section can hold: TrainConfig's fields and what params.yaml sets."""
    params_yaml = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    return {f.name for f in fields(TrainConfig)} | set(params_yaml)


def test_every_train_key_is_either_a_stage_param_or_a_placement_key():
    listed = train_stage_params()
    assert "train" not in listed, ("dvc.yaml: the train stage lists the whole `train` section; list "
                                   "its keys that change results (see PLACEMENT_KEYS)")
    train_keys = {p.split(".", 1)[1] for p in listed if p.startswith("train.")}
    unclassified = section_keys() - train_keys - set(PLACEMENT_KEYS)
    assert not unclassified, (f"train.{sorted(unclassified)[0]} is neither in the train stage's params "
                              "in dvc.yaml nor in PLACEMENT_KEYS (xreflect/training/config.py): add it to "
                              "the one that fits (does it change what the stage computes?)")
    assert not train_keys & set(PLACEMENT_KEYS), (
        f"dvc.yaml lists train.{sorted(train_keys & set(PLACEMENT_KEYS))[0]}, which only says where the "
        "work runs; a change to it would miss DVC's run-cache")
    assert train_keys <= section_keys(), f"dvc.yaml lists unknown train keys: {sorted(train_keys - section_keys())}"


def test_placement_keys_are_real_keys_and_stay_out_of_the_checkpoint_key():
    names = {f.name for f in fields(TrainConfig)}
    assert set(PLACEMENT_KEYS) <= names
    # A grid point's checkpoint key holds every result-changing key but the grid lists themselves.
    assert set(TrainConfig().point_params()) == names - set(PLACEMENT_KEYS) - {"lr", "dropout"}
