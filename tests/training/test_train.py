"""Grid training: config validation, metrics, early stopping, selection on validation, learning,
equivalence with the plain reference, resume, and the stage script."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hypothesis import given, settings, strategies as st

import xreflect.training.grid as train_mod
from xreflect.core.config import section_with_overrides
from xreflect.paper.strategies import strategy_sources
from xreflect.data.split import Split, candidates, make_split
from xreflect.evaluation.metrics import topk_metrics, torch_topk_metrics
from xreflect.training.model import init_state
from xreflect.training.baselines import popularity
from xreflect.training.config import GridPoint, TrainConfig, paper_defaults, train_config
from xreflect.training.grid import Tracker, select_and_test, train_grid
from xreflect.training.reference import train_reference
from xreflect.training.results import PointResult
from xreflect.training.store import DirectoryStore

from tests.support.metrics_oracle import oracle_topk_metrics

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n_users=150, n_items=200, n_clusters=5, d=32, per_user=20, seed=0) -> tuple[Split, np.ndarray]:
    """Users like one latent cluster of items; the cluster is visible in the item features (a centre
    plus noise), while popularity (Pareto) is cluster-blind: a model that reads the features can beat
    Item Popularity, which cannot."""
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, n_clusters, n_items)
    feats = rng.normal(size=(n_clusters, d))[item_cluster] + 0.5 * rng.normal(size=(n_items, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    user_cluster = rng.integers(0, n_clusters, n_users)
    pop = rng.pareto(1.5, n_items) + 0.1
    pairs = []
    for u in range(n_users):
        w = pop * np.where(item_cluster == user_cluster[u], 20.0, 1.0)
        pairs += [(u, i) for i in rng.choice(n_items, per_user, replace=False, p=w / w.sum())]
    return make_split(np.array(pairs), n_users, n_items, (8, 1, 1), 50, seed), feats.astype(np.float32)


SMALL = dict(dim=32, item_hidden=[64], batch_size=512, max_epochs=40, eval_every=5, patience=2,
             precision="fp32")  # the same arithmetic on every machine (bf16: tests/training/test_precision.py)


def quiet(_: str) -> None:
    pass


def test_recall(split: Split, scores: np.ndarray) -> float:
    c = candidates(split, "test")
    return topk_metrics(scores, c.labels, c.mask, [10])["recall@10"]


test_recall.__test__ = False  # a helper, not a test


# ------------------------------------------------------------------------------------ config

def test_config_defaults_are_the_papers():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dataset in ("demo", "movielens-1m", "amazon-software"):
        config, _ = train_config({**params, "dataset": dataset})
        assert config.lr == (0.0001, 0.0005, 0.001) and config.dropout == (0.1, 0.3, 0.5)
        assert (config.dim, config.batch_size, config.weight_decay, config.eval_every) == (128, 4096, 0.0005, 5)
        assert len(config.grid()) == 9
    # The paper's datasets get the paper's tower; only the demo shrinks it.
    assert train_config({**params, "dataset": "movielens-1m"})[0].item_hidden == (512, 256)


def test_a_users_change_wins_over_the_dataset_override():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = {**params, "dataset": "demo"}
    config, applied = train_config(demo)
    assert config.max_epochs == 20 and applied["max_epochs"] == 20  # the demo's override
    # `dvc exp run -S train.max_epochs=50` on the demo: the user's value wins, the other overrides stay.
    changed = {**demo, "train": {**demo["train"], "max_epochs": 50}}
    config, applied = train_config(changed)
    assert config.max_epochs == 50 and "max_epochs" not in applied
    assert config.item_hidden == (64,) and config.patience == 2


def test_dataset_override_of_an_unknown_key_is_named():
    params = {"dataset": "demo", "train": {"lr": [0.001], "dataset_overrides": {"demo": {"lr_typo": 1}}}}
    with pytest.raises(ValueError, match="train.dataset_overrides.demo.lr_typo is not a key of 'train'"):
        section_with_overrides(params, "train", paper_defaults())


@pytest.mark.parametrize("section, message", [
    ({"lr": []}, "params.yaml: train.lr is empty; give at least one learning rate, e.g. [0.001]"),
    ({"dropout": None}, "params.yaml: train.dropout is empty"),
    ({"lr": ["fast"]}, "train.lr holds 'fast'"),
    ({"dropout": [1.5]}, "train.dropout holds 1.5"),
    ({"item_hidden": [512, "x"]}, "train.item_hidden must be a list"),
    ({"select_metric": "auc"}, "train.select_metric is 'auc'"),
    ({"patience": 0}, "train.patience must be a positive integer"),
    ({"learning_rate": [0.1]}, "train.learning_rate is not a training parameter; allowed keys: dim"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_params(section)
    assert message in str(err.value)


def test_unknown_strategy_names_allowed_values():
    with pytest.raises(ValueError, match=r"strategy 'nope' is not defined; allowed values are \['popularity', 'text'\]"):
        strategy_sources({"strategies": {"popularity": [], "text": ["description"]}}, "nope")
    assert strategy_sources({"strategies": {"popularity": []}}, "popularity") == []


# ------------------------------------------------------------------------------------ metrics

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([1, 2, 3, 50]))
def test_torch_metrics_equal_numpy_metrics_with_ties_and_padding(seed, levels):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (20, 15)).astype(np.float32)  # few levels: many ties
    labels = rng.random((20, 15)) < 0.3
    mask = rng.random((20, 15)) < 0.9
    expected = oracle_topk_metrics(scores, labels, mask, [1, 3, 10])
    got = torch_topk_metrics(torch.as_tensor(scores), torch.as_tensor(labels), torch.as_tensor(mask), [1, 3, 10])
    assert got == pytest.approx(expected)


def test_constant_scorer_gets_nothing():
    labels = torch.tensor([[True, False, False]])
    got = torch_topk_metrics(torch.zeros(1, 3), labels, torch.ones(1, 3, dtype=torch.bool), [1])
    assert got["recall@1"] == 0.0


# ------------------------------------------------------------------------------------ early stopping

def test_tracker_keeps_best_epoch_and_counts_stale_evaluations():
    # Evaluations at epochs 5..30 with recall 0.1, 0.3, 0.2, 0.3 (equal is no improvement), 0.25:
    # the best is epoch 10; with patience 3 the run stops at epoch 25 (3 evaluations without gain).
    tracker, stop_at = Tracker(GridPoint(0.1, 0.1)), None
    for epoch, value in zip([5, 10, 15, 20, 25, 30], [0.1, 0.3, 0.2, 0.3, 0.25, 0.9]):
        tracker.update(epoch, {"recall@10": value}, "recall@10", lambda: {"epoch": np.array(epoch)})
        if tracker.stale >= 3:
            stop_at = epoch
            break
    assert (tracker.best_epoch, tracker.best, stop_at) == (10, 0.3, 25)
    assert int(tracker.best_state["epoch"]) == 10


def test_grid_keeps_best_validation_checkpoint():
    split, feats = planted()
    config = TrainConfig.from_params({**SMALL, "lr": [0.01], "dropout": [0.1]})
    result = train_grid(split, feats, config, log=quiet)
    point = result.points[0]
    # Stopped `patience` evaluations after its best epoch, or at max_epochs.
    assert point.epochs_run in (point.best_epoch + config.patience * config.eval_every, config.max_epochs)
    # The returned scores come from the best epoch's checkpoint: their validation metrics are the
    # ones recorded at that epoch.
    valid = candidates(split, "valid")
    recomputed = topk_metrics(result.valid_scores, valid.labels, valid.mask, [10])["recall@10"]
    assert recomputed == pytest.approx(point.valid_metrics["recall@10"], abs=1e-6)


# ------------------------------------------------------------------------------------ selection

def test_selection_uses_validation_not_test():
    """Two hand-made models: A puts each user's validation positive on top (validation recall 1,
    test recall 0); B puts the test positive on top (validation 0, test 1). A must be chosen."""
    n_users, n_items = 3, 29
    split = Split(train=np.array([[0, 0], [1, 1], [2, 2]], np.int32), valid=np.array([[0, 3], [1, 4], [2, 5]], np.int32),
                  test=np.array([[0, 6], [1, 7], [2, 8]], np.int32),
                  valid_negatives=np.array([list(range(9, 19))] * 3, np.int32),
                  test_negatives=np.array([list(range(19, 29))] * 3, np.int32), n_users=n_users, n_items=n_items)
    feats = torch.eye(n_items)  # linear identity tower: a user's vector is its score per item

    def model(top: np.ndarray) -> dict:
        state = init_state(n_users, n_items, [], n_items, seed=0)
        state["w0"], state["b0"] = np.eye(n_items, dtype=np.float32), np.zeros(n_items, np.float32)
        state["user"] = np.zeros((n_users, n_items), np.float32)
        state["user"][top[:, 0], top[:, 1]] = 1.0
        return state

    a, b = model(split.valid), model(split.test)
    config = TrainConfig(lr=(0.1, 0.2))
    trained = [(PointResult(0.1, 0.1, 5, 10, 1.0, {"recall@10": 1.0}), a),
               (PointResult(0.2, 0.1, 5, 10, 1.0, {"recall@10": 0.0}), b)]
    result = select_and_test(split, feats, config, trained)
    assert result.chosen == 0
    assert test_recall(split, result.test_scores) == 0.0  # A's (poor) test result is what is reported


# ------------------------------------------------------------------------------------ learning

def test_trainer_beats_popularity_on_planted_problem():
    split, feats = planted()
    config = TrainConfig.from_params({**SMALL, "lr": [0.01, 0.001], "dropout": [0.1]})
    result = train_grid(split, feats, config, log=quiet)
    assert len(result.points) == 2 and result.chosen in (0, 1)
    model, pop = test_recall(split, result.test_scores), test_recall(split, popularity(split).test_scores)
    assert model > pop + 0.05, (model, pop)


def test_stacked_and_reference_trainers_agree():
    split, feats = planted(seed=1)
    # Without dropout the two implementations compute the same arithmetic: same trajectory.
    config = TrainConfig.from_params({**SMALL, "lr": [0.003], "dropout": [0.0], "max_epochs": 10})
    fast = train_grid(split, feats, config, log=quiet)
    ref, ref_state = train_reference(split, feats, config, GridPoint(0.003, 0.0))
    assert (fast.points[0].best_epoch, fast.points[0].epochs_run) == (ref.best_epoch, ref.epochs_run)
    assert fast.points[0].valid_metrics == pytest.approx(ref.valid_metrics, abs=0.01)
    # With dropout their random streams differ; test metrics must agree within noise.
    config = TrainConfig.from_params({**SMALL, "lr": [0.01], "dropout": [0.3]})
    fast = train_grid(split, feats, config, log=quiet)
    _, ref_state = train_reference(split, feats, config, GridPoint(0.01, 0.3))
    ref_scores = select_and_test(split, torch.as_tensor(feats), config,
                                 [(PointResult(0.01, 0.3, 0, 0, 0, {"recall@10": 0.0}), ref_state)]).test_scores
    assert abs(test_recall(split, fast.test_scores) - test_recall(split, ref_scores)) < 0.05


# ------------------------------------------------------------------------------------ resume

class Interrupted(Exception):
    pass


class InterruptingStore(DirectoryStore):
    """Saves `allow` grid points, then 'kills' the run while saving the next."""

    def __init__(self, root, allow: int):
        super().__init__(root)
        self.allow = allow

    def save(self, point, result, state):
        if self.allow == 0:
            raise Interrupted
        self.allow -= 1
        super().save(point, result, state)


@pytest.mark.parametrize("stack_size", [1, 4])
def test_resume_trains_only_unfinished_points(tmp_path, monkeypatch, stack_size):
    split, feats = planted(n_users=60, n_items=80)
    config = TrainConfig.from_params({**SMALL, "lr": [0.01, 0.003], "dropout": [0.1, 0.5], "max_epochs": 20,
                                      "patience": 1})
    trained: list[int] = []  # grid points passed to the trainer
    real = train_mod.train_points
    def counting(split, features, config, points, *args, **kwargs):
        trained.extend([1] * len(points))
        return real(split, features, config, points, *args, **kwargs)
    monkeypatch.setattr(train_mod, "train_points", counting)
    store = lambda: DirectoryStore(tmp_path / "store")  # noqa: E731

    with pytest.raises(Interrupted):
        train_grid(split, feats, config, InterruptingStore(tmp_path / "store", allow=2), log=quiet,
                   stack_size=stack_size)
    assert len(list((tmp_path / "store").glob("*.npz"))) == 2
    trained.clear()
    resumed = train_grid(split, feats, config, store(), log=quiet, stack_size=stack_size)
    assert len(trained) == 2  # only the two unfinished points
    trained.clear()
    again = train_grid(split, feats, config, store(), log=quiet, stack_size=stack_size)
    assert len(trained) == 0  # everything restored, nothing trained
    uninterrupted = train_grid(split, feats, config, None, log=quiet, stack_size=stack_size)
    assert resumed.chosen == uninterrupted.chosen == again.chosen
    np.testing.assert_allclose(resumed.test_scores, uninterrupted.test_scores, rtol=1e-4, atol=1e-4)

    # Only the chosen point keeps its parameters; the others keep their results.
    grid = config.grid()
    with_state = [p for p in grid if store().load(p)[1] is not None]
    assert with_state == [grid[resumed.chosen]]
    # A changed grid that selects a pruned point retrains that point alone, to the same result.
    other = next(p for p in grid if p != grid[resumed.chosen])
    alone = TrainConfig.from_params({**SMALL, "lr": [other.lr], "dropout": [other.dropout], "max_epochs": 20,
                                     "patience": 1})
    trained.clear()
    rerun = train_grid(split, feats, alone, store(), log=quiet)
    assert len(trained) == 1
    assert rerun.points[0].valid_metrics == pytest.approx(resumed.points[grid.index(other)].valid_metrics, abs=1e-4)


# ------------------------------------------------------------------------------------ stage

def write_stage_inputs(root: Path, strategies: dict, train: dict) -> Split:
    split, feats = planted(n_users=60, n_items=80, d=16)
    (root / "data/splits").mkdir(parents=True)
    (root / "data/embeddings/text_image").mkdir(parents=True)
    split.save(root / "data/splits/split_0.npz")
    np.save(root / "data/embeddings/text_image/description.npy", feats[:, :10])
    np.save(root / "data/embeddings/text_image/image.npy", feats[:, 10:])
    params = {"split": {"n_splits": 1, "seed": 0, "eval_negatives": split.eval_negatives_mode}, "train": train, "strategies": strategies}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return split


def test_stage_writes_aligned_scores_and_resumes(tmp_path, monkeypatch):
    import stages.train as stage  # noqa: PLC0415
    split = write_stage_inputs(tmp_path, {"popularity": [], "text_image": ["description", "image"]},
                               {**SMALL, "lr": [0.01], "dropout": [0.1, 0.3], "max_epochs": 10})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / "cache"))
    stage.main(["--strategy", "text_image"])
    out = np.load(tmp_path / "models/text_image/split_0.npz")
    assert out["test_scores"].shape == candidates(split, "test").items.shape
    assert out["valid_scores"].shape == candidates(split, "valid").items.shape
    assert out["test_scores"].dtype == np.float32
    selection = json.loads((tmp_path / "models/text_image/selection.json").read_text())
    assert len(selection["splits"]["split_0"]["grid"]) == 2
    assert selection["splits"]["split_0"]["chosen"]["lr"] == 0.01

    # DVC deletes outs before a rerun: the checkpoints outside them mean nothing is retrained.
    os.remove(tmp_path / "models/text_image/split_0.npz")
    monkeypatch.setattr(train_mod, "train_points", lambda *a, **k: pytest.fail("retrained a finished point"))
    stage.main(["--strategy", "text_image"])
    np.testing.assert_array_equal(np.load(tmp_path / "models/text_image/split_0.npz")["test_scores"], out["test_scores"])

    curves = pd.read_csv(tmp_path / "plots/training/text_image.csv")
    # both grid points, evaluated at epochs 5 and 10 unless stopped early, the selected one marked
    assert set(curves["grid_point"]) == {"lr=0.01 dropout=0.1", "lr=0.01 dropout=0.3"}
    assert set(curves["epoch"]) <= {5, 10} and curves["train_loss"].between(0, 2).all()
    assert curves[curves["selected"]]["grid_point"].nunique() == 1
    chosen = selection["splits"]["split_0"]["chosen"]
    assert curves[curves["selected"]]["valid_recall@10"].max() == pytest.approx(chosen["valid_metrics"]["recall@10"], abs=1e-6)

    stage.main(["--strategy", "popularity"])
    pop = np.load(tmp_path / "models/popularity/split_0.npz")["test_scores"]
    counts = np.bincount(split.train[:, 1], minlength=split.n_items)
    np.testing.assert_array_equal(pop, counts[candidates(split, "test").items])

    with pytest.raises(ValueError, match=r"strategy 'kar' is not defined; allowed values are \['popularity', 'text_image'\]"):
        stage.main(["--strategy", "kar"])
