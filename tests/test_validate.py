"""validate_params: each bad -S value gets one ParamsError naming the key, the value and the fix."""
from __future__ import annotations

import copy

import pytest

from xreflect.core.config import ParamsError, load_params
from xreflect.validate import validate_params

SHIPPED = load_params()


def with_value(path: str, value):
    """The shipped params with one dotted key set, as `dvc exp run -S path=value` would."""
    params = copy.deepcopy(SHIPPED)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def test_shipped_params_pass():
    validate_params(SHIPPED)


@pytest.mark.parametrize("path, value, expected", [
    ("dataset", "movielens-10m", r"dataset='movielens-10m' is not one of the allowed values \['amazon-software', 'demo', 'movielens-1m'\]"),
    ("backbone", "gpt5", r"backbone='gpt5' is not one of the allowed values .*'gpt4v'"),
    ("strategies.mine", ["description", "cott"], r"strategies.mine lists unknown source 'cott'"),
    ("train.lr", [0.001, -0.001], r"train.lr holds -0.001, which is not a valid learning rate; give a list of "
                                  r"numbers, e.g. \[0.001\]"),
    ("train.lr", [], r"train.lr is empty; give at least one learning rate, e.g. \[0.001\]"),
    ("train.dropout", [0.1, 1.0], r"train.dropout holds 1.0, which is not a valid dropout rate"),
    ("train.dropout", None, r"train.dropout is empty; give at least one dropout rate"),
    ("train.batch_size", 0, r"train.batch_size must be a positive integer, got 0"),
    ("train.select_metric", "hits@10", r"train.select_metric is 'hits@10'; use <metric>@<k>"),
    ("generate.separate_inputs.r_image", "visual", r"generate.separate_inputs.r_image is 'visual'; use a prompt id"),
    ("generate.max_failures", 1.5, r"generate.max_failures is 1.5; give the fraction"),
    ("generate.budget_usd_total", -5, r"generate.budget_usd_total is -5; give USD >= 0, or null"),
    ("evaluate.baseline", "text_imag", r"evaluate.baseline is 'text_imag'; use one of the strategies"),
    ("analyze.reference", "visual", r"analyze.reference is 'visual'; use a prompt id"),
    ("analyze.responses", ["llm_rec", "xr_sep"], r"analyze.responses lists 'xr_sep', which is not a prompt id"),
    ("backbones.gpt4v.timeout_s", 0, r"backbones.gpt4v.timeout_s is 0; give seconds > 0"),
    ("split.n_splits", 0, r"split.n_splits is 0"),
])
def test_bad_value_names_key_value_and_fix(path, value, expected):
    params = with_value(path, value)
    if path.startswith("backbones.gpt4v"):
        params["backbone"] = "gpt4v"
    with pytest.raises(ParamsError, match=expected):
        validate_params(params)


def test_dataset_override_is_checked_for_the_chosen_dataset_only():
    params = with_value("train.dataset_overrides", {"movielens-1m": {"lr": [-1.0]}})
    validate_params(params)  # the demo is chosen: the override does not apply
    params["dataset"] = "movielens-1m"
    with pytest.raises(ParamsError, match=r"train.lr holds -1.0"):
        validate_params(params)
