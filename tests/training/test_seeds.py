"""Training seeds per split: different for every split, identical across reruns and processes."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from xreflect.training.config import GridPoint, TrainConfig
from xreflect.training.grid import train_grid
from xreflect.training.seeds import dropout_seed, epoch_seed, init_seed

from tests.training.test_train import SMALL, planted, quiet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_stream_differs_per_split_and_per_what_it_drives():
    split, _ = planted(n_users=20, n_items=40)
    other = dataclasses.replace(split, seed=split.seed + 1)
    config, point = TrainConfig(), GridPoint(0.001, 0.1)
    for seed_of in (lambda s: init_seed(config, s), lambda s: dropout_seed(config, s, point),
                    lambda s: epoch_seed(config, s, 1)):
        assert seed_of(split) != seed_of(other)
        assert seed_of(split) == seed_of(dataclasses.replace(split))  # same split, same seed
    assert len({init_seed(config, split), dropout_seed(config, split, point), epoch_seed(config, split, 1),
                epoch_seed(config, split, 2), dropout_seed(config, split, GridPoint(0.001, 0.3))}) == 5
    assert init_seed(TrainConfig(seed=1), split) != init_seed(config, split)


def test_seeds_are_the_same_in_a_fresh_process():
    """A rerun (a new interpreter: Python's own hash() is salted per process) gets the same seeds."""
    code = ("from xreflect.training.model import seed_for; "
            "print(seed_for(0, 'init', 2024), seed_for(0, 'dropout', 2025, 0.001, 0.3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from xreflect.training.model import seed_for
    assert [int(v) for v in out] == [seed_for(0, "init", 2024), seed_for(0, "dropout", 2025, 0.001, 0.3)]


def test_same_split_trains_identically_and_another_split_seed_trains_differently():
    split, feats = planted(n_users=60, n_items=80)
    config = TrainConfig.from_params({**SMALL, "lr": [0.01], "dropout": [0.3], "max_epochs": 10})
    first = train_grid(split, feats, config, log=quiet)
    rerun = train_grid(split, feats, config, log=quiet)
    np.testing.assert_array_equal(first.test_scores, rerun.test_scores)
    # The same data under another split seed: only the training streams change, and the model with them.
    reseeded = train_grid(dataclasses.replace(split, seed=split.seed + 1), feats, config, log=quiet)
    assert not np.allclose(first.test_scores, reseeded.test_scores)
