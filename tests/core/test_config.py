import pytest

from xreflect.backends import create_backend
from xreflect.core.config import ParamsError, dataset_entry, load_params
from xreflect.paper.strategies import strategy_sources


def test_unknown_dataset_names_key_and_allowed_values():
    params = {"dataset": "movielens-20m", "datasets": {"demo": {"split_ratio": [8, 1, 1]}}}
    with pytest.raises(ParamsError, match=r"dataset='movielens-20m'.*\['demo'\]"):
        dataset_entry(params)


def test_bad_split_ratio_is_named():
    with pytest.raises(ParamsError, match=r"datasets.demo.split_ratio"):
        dataset_entry({"dataset": "demo", "datasets": {"demo": {"split_ratio": [8, 1]}}})


def test_unknown_backbone_names_key_and_allowed_values():
    with pytest.raises(ValueError, match=r"backbone 'gpt5'.*\['offline'\]"):
        create_backend("gpt5", {"offline": {"provider": "offline"}})
    with pytest.raises(ValueError, match=r"backbones.x.provider.*allowed values"):
        create_backend("x", {"x": {"provider": "nope"}})


def test_unknown_strategy_and_source_are_named():
    params = {"strategies": {"text": ["description"], "odd": ["description", "poster_vibes"]}}
    with pytest.raises(ParamsError, match=r"strategy 'cot' is not defined.*\['odd', 'text'\]"):
        strategy_sources(params, "cot")
    with pytest.raises(ParamsError, match=r"strategies.odd lists unknown source 'poster_vibes'"):
        strategy_sources(params, "odd")


def test_shipped_params_are_consistent():
    params = load_params()
    assert dataset_entry(params)[0] == "demo" and params["backbone"] == "offline"
    for name in params["datasets"]:
        dataset_entry({**params, "dataset": name})
    for strategy in params["strategies"]:
        strategy_sources(params, strategy)
    assert len(params["strategies"]) == 13


def test_params_parse_with_dvcs_yaml_parser():
    # DVC reads params.yaml with ruamel, which is stricter than PyYAML (e.g. ':' in flow lists).
    import ruamel.yaml

    assert ruamel.yaml.YAML(typ="safe").load(open("params.yaml", encoding="utf-8"))["dataset"] == "demo"
