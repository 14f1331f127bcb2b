"""Reading params.yaml and failing early, with the key and the allowed values, on bad choices."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    pass


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run the stage from the repository root")
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def registry_entry(params: dict, key: str, registry: str) -> tuple[str, dict]:
    """The entry that top-level `key` names in the `registry` section, e.g. ('demo', {...})."""
    name = params.get(key)
    entries = params.get(registry) or {}
    if name not in entries:
        raise ParamsError(f"params.yaml: {key}={name!r} is not one of the allowed values "
                          f"{sorted(entries)} (the keys of '{registry}')")
    return name, entries[name]


def dataset_entry(params: dict) -> tuple[str, dict]:
    name, entry = registry_entry(params, "dataset", "datasets")
    ratio = entry.get("split_ratio")
    if not (isinstance(ratio, list) and len(ratio) == 3 and all(isinstance(r, (int, float)) and r > 0 for r in ratio)):
        raise ParamsError(f"params.yaml: datasets.{name}.split_ratio must be three positive numbers "
                          f"train:valid:test, e.g. [8, 1, 1]; got {ratio!r}")
    return name, entry


def run_strategies(params: dict) -> list[str]:
    """The strategies `run` lists (the pipeline's train@ stages), each defined under `strategies`."""
    run = params.get("run")
    strategies = params.get("strategies") or {}
    if not isinstance(run, list) or not run or len(set(run)) != len(run):
        raise ParamsError(f"params.yaml: run must be a non-empty list of distinct strategy names, e.g. "
                          f"-S 'run=[text,xreflect]'; got {run!r}")
    unknown = [name for name in run if name not in strategies]
    if unknown:
        raise ParamsError(f"params.yaml: run lists {unknown[0]!r}, which is not defined under 'strategies'; "
                          f"define it there (strategies.{unknown[0]}: [sources]) or use one of {sorted(strategies)}")
    return list(run)


def section_with_overrides(params: dict, name: str, defaults: dict) -> tuple[dict, dict]:
    """Section `name` (`train` or `placement`) with `<name>.dataset_overrides.<dataset>` applied,
    and the overrides used.

    The paper's protocol is the `train` section itself; a dataset may change some of it (the demo,
    whose ~400 items and ~6,000 training interactions make a 3-layer tower over 100 epochs cost
    far more than the data can use), and where its work runs (`placement`). An override applies to
    a key only while `<name>.<key>` still holds its default (`defaults`): once a user changes the
    key, e.g. with `dvc exp run -S train.max_epochs=50`, the user's value wins."""
    section = dict(params.get(name) or {})
    overrides = section.pop("dataset_overrides", None) or {}
    dataset = params.get("dataset")
    chosen = dict(overrides.get(dataset) or {})
    unknown = sorted(set(chosen) - set(section))
    if unknown:
        raise ParamsError(f"params.yaml: {name}.dataset_overrides.{dataset}.{unknown[0]} is not "
                          f"a key of '{name}'; allowed keys: {sorted(section)}")
    applied = {key: value for key, value in chosen.items() if _same(section[key], defaults.get(key))}
    return {**section, **applied}, applied


def _same(value: Any, default: Any) -> bool:
    """params.yaml value equal to a dataclass default (lists there are tuples)."""
    return (list(value) if isinstance(value, (list, tuple)) else value) == \
        (list(default) if isinstance(default, (list, tuple)) else default)
