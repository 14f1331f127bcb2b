"""placement.stack_splits: every split's grid in one stack gives each split the result it gets alone,
up to float reduction order, in fp32 and bf16, with early stopping, resume and the executor."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import xreflect.training.model as model
from xreflect.data.split import Split, make_split
from xreflect.training.config import TrainConfig
from xreflect.training.executor import GridJob, run_grid_jobs
from xreflect.training.grid import train_grid, train_grids_stacked
from xreflect.training.store import DirectoryStore

from tests.training.test_train import SMALL, planted, quiet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def three_splits() -> tuple[list[Split], np.ndarray]:
    """Three splits of one planted problem (their epochs have as many samples), and its features."""
    base, feats = planted(n_users=100, n_items=120, d=16, seed=1)
    pairs = np.concatenate([base.train, base.valid, base.test])
    return [make_split(pairs, base.n_users, base.n_items, (8, 1, 1), 40, seed) for seed in (1, 2, 3)], feats


def config(precision: str, hidden: list[int]) -> TrainConfig:
    # patience 1 and 4 points: points stop at different epochs, so rows leave the stack mid-run
    return TrainConfig.from_params({**SMALL, "item_hidden": hidden, "lr": [0.01, 0.002], "dropout": [0.1, 0.5],
                                    "max_epochs": 20, "patience": 1, "precision": precision})


def assert_close_results(alone, stacked) -> None:
    for a, b in zip(alone, stacked, strict=True):
        assert a.chosen == b.chosen
        for pa, pb in zip(a.points, b.points, strict=True):
            assert (pa.lr, pa.dropout, pa.best_epoch, pa.epochs_run) == (pb.lr, pb.dropout, pb.best_epoch, pb.epochs_run)
            for ea, eb in zip(pa.curve, pb.curve, strict=True):
                assert ea["epoch"] == eb["epoch"]
                assert ea["valid_recall@10"] == pytest.approx(eb["valid_recall@10"], abs=1e-6)
                assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5)
        np.testing.assert_allclose(b.test_scores, a.test_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.valid_scores, a.valid_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden", [[32], []], ids=["mlp", "linear"])
def test_stacked_splits_equal_each_split_trained_alone(precision, hidden, monkeypatch):
    # bf16 pads a batch's items to a multiple of BF16_ROW_STEP; at 1 the splits' batches differ in
    # length, so each row must draw its dropout bits for its own split's items only.
    monkeypatch.setattr(model, "BF16_ROW_STEP", 1)
    splits, feats = three_splits()
    cfg = config(precision, hidden)
    alone = [train_grid(split, feats, cfg, log=quiet, stack_size=len(cfg.grid())) for split in splits]
    stacked = train_grids_stacked(splits, feats, cfg, log=quiet)
    assert len({p.epochs_run for r in alone for p in r.points}) > 1  # early stopping shrank the stack
    assert_close_results(alone, stacked)


def test_splits_of_different_sizes_stack_apart_and_resume_from_the_store(tmp_path):
    splits, feats = three_splits()
    other, _ = planted(n_users=100, n_items=120, d=16, per_user=15, seed=4)  # fewer samples per epoch
    splits.append(other)
    cfg = config("fp32", [32])
    alone = [train_grid(split, feats, cfg, log=quiet, stack_size=len(cfg.grid())) for split in splits]
    stores = [DirectoryStore(tmp_path / str(k)) for k in range(len(splits))]
    # An interrupted run left two points of split 1 in its store: only the rest trains.
    first = config("fp32", [32])
    train_grid(splits[1], feats, replace(first, lr=(0.01,)), stores[1], log=quiet)
    lines: list[str] = []
    stacked = train_grids_stacked(splits, feats, cfg, stores, log=lines.append)
    assert any("split 2/4: 2 grid point(s) restored" in line for line in lines)
    assert any(line.startswith("train 3 splits stacked: ") for line in lines)
    assert any(line.startswith("train 1 splits stacked: ") for line in lines)
    assert_close_results(alone, stacked)


def test_the_local_executor_stacks_the_splits_when_asked(tmp_path):
    splits, feats = three_splits()
    paths = []
    for k, split in enumerate(splits):
        paths.append(tmp_path / f"split_{k}.npz")
        split.save(paths[-1])
    results = {}
    for stack in (False, True):
        cfg = replace(config("fp32", [32]), stack_splits=stack)
        jobs = [GridJob(k, f"split {k + 1}/3: ", path, cfg, None) for k, path in enumerate(paths)]
        lines: list[str] = []
        results[stack] = [result for _, result in run_grid_jobs(jobs, feats, "local", lines.append)]
        assert any("splits stacked" in line for line in lines) == stack
    assert_close_results(results[False], results[True])


def test_stack_splits_must_be_a_boolean():
    assert TrainConfig.from_params({"stack_splits": True}).stack_splits
    with pytest.raises(ValueError, match="placement.stack_splits must be true or false, got 'yes'"):
        TrainConfig.from_params({"stack_splits": "yes"})
