"""train.precision: which dtype `auto` picks, that bf16 keeps fp32 master weights, and that bf16
training reaches fp32's validation Recall@10 within the seed-to-seed spread."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xreflect.training.precision as precision_mod
from tests.training.test_random_bits import splitmix64
from xreflect.training.model import (StackedAdamW, StackedTwoTower, _BiasReluDrop, init_state, pad_rows,
                                     stacked_loss)
from xreflect.training.config import TrainConfig
from xreflect.training.precision import resolve_precision

from benchmarks.precision_check import recall_after
from tests.training.test_train import SMALL, planted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, chosen", [({"avx512f", "amx_tile", "amx_bf16"}, "bf16"),
                                           ({"avx512f", "avx512_bf16"}, "bf16"),
                                           ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_picks_bf16_only_with_native_cpu_support(monkeypatch, flags, chosen):
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: flags)
    used, why = resolve_precision("auto", CPU)
    assert used == chosen
    assert why.startswith("train.precision auto: CPU ")
    assert ("no native bf16" in why) == (chosen == "fp32")
    # An explicit setting is obeyed, and the log says when bf16 is emulated.
    assert resolve_precision("fp32", CPU)[0] == "fp32"
    used, why = resolve_precision("bf16", CPU)
    assert used == "bf16" and ("emulated" in why) == (chosen == "fp32")


def test_auto_on_a_gpu_keeps_fp32_and_bf16_is_obeyed_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        used, why = resolve_precision("auto", torch.device("cuda"))
        assert used == "fp32" and "GPU Test GPU" in why and "TF32" in why
        assert resolve_precision("bf16", torch.device("cuda"))[0] == "bf16"


def test_bad_precision_and_executor_name_the_key():
    with pytest.raises(ValueError, match="train.precision is 'fp16'; use one of auto, fp32, bf16"):
        TrainConfig.from_params({"precision": "fp16"})
    with pytest.raises(ValueError, match="placement.executor is 'slurm'; use one of local, ray"):
        TrainConfig.from_params({"executor": "slurm"})


def test_where_a_point_trains_is_not_part_of_its_checkpoint_key_but_its_precision_is():
    base = TrainConfig()
    assert TrainConfig(executor="ray").point_params() == base.point_params()
    assert TrainConfig(precision="fp32").point_params() != base.point_params()


def test_bf16_step_keeps_fp32_weights_gradients_and_optimizer_state():
    feats = torch.as_tensor(np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32))
    state = init_state(n_users=5, d_in=16, hidden=[32], dim=8, seed=0)
    users, items = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([3, 3, 7, 9, 20, 29])
    labels = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.float32)
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = StackedTwoTower([state, state], feats, dropout=[0.0, 0.0], seeds=[0, 1], dtype=dtype)
        optimizer = StackedAdamW(model.params, [0.01, 0.001], 0.0005)
        logits[dtype] = model.logits(users, items)
        assert logits[dtype].dtype == torch.float32  # the loss is computed in fp32
        stacked_loss(logits[dtype], labels).backward()
        assert all(p.grad.dtype == torch.float32 for p in model.params.values())
        optimizer.step(model.params)
        assert all(p.dtype == torch.float32 for p in model.params.values())
        assert all(m.dtype == torch.float32 for m in (*optimizer.exp_avg.values(), *optimizer.exp_avg_sq.values()))
        # Evaluation runs in fp32 from the master weights whatever the training dtype.
        assert model.scores(torch.arange(5), torch.tensor([[0, 1]] * 5)).dtype == torch.float32
    # bf16 rounds (8 significant bits), so the logits differ a little, never much.
    difference = (logits[torch.bfloat16] - logits[torch.float32]).abs().max().item()
    assert 0 < difference < 0.05 * logits[torch.float32].abs().max().item()


@pytest.mark.parametrize("bits", ["splitmix64", "torch generators"])
def test_bf16_dropout_keeps_each_points_rate(bits):
    """bf16 training draws 16-bit keep masks (StackedTwoTower._keep_masks) and scales the next
    layer's weights by 1/keep instead of the activations. The bits: each point's SplitMix64 stream
    on the CPU, torch's generators on a GPU (that path taken here on the CPU)."""
    def tower(**kwargs):
        model = StackedTwoTower(dtype=torch.bfloat16, **kwargs)
        if bits == "torch generators":
            model.bit_streams = None
        return model

    model = tower(states=[init_state(1, 4, [], 2, seed=0)] * 3, features=torch.ones(10, 4), dropout=[0.1, 0.5, 0.0],
                  seeds=[0, 1, 2])
    keep = model._keep_masks((2000, 50))
    assert keep.dtype == torch.int16 and set(torch.unique(keep).tolist()) <= {-1, 0}
    for row, rate in enumerate([0.1, 0.5, 0.0]):
        assert abs((keep[row] == 0).float().mean().item() - rate) < 0.01
    # The keep rate is rounded to 1/65536, and the scale is its exact inverse.
    torch.testing.assert_close(model.keep_scale, torch.tensor([65536 / 58982, 2.0, 1.0]))
    # The same point draws the same masks whatever its neighbours.
    alone = tower(states=[init_state(1, 4, [], 2, seed=0)], features=torch.ones(10, 4), dropout=[0.5], seeds=[1])
    assert torch.equal(alone._keep_masks((2000, 50))[0], keep[1])
    # A hidden layer (_bias_relu_drop: row by row on the CPU, all rows at once on a GPU) zeroes
    # the units of the point's next masks after the bias and ReLU.
    def fresh():
        return tower(states=[init_state(1, 4, [], 2, seed=0)] * 3, features=torch.ones(10, 4),
                     dropout=[0.1, 0.5, 0.0], seeds=[0, 1, 2])

    h, bias = torch.randn(3, 2000, 48, dtype=torch.bfloat16), torch.randn(3, 1, 48, dtype=torch.bfloat16)
    masks = fresh()._keep_masks((2000, 48))
    assert torch.equal(fresh()._bias_relu_drop(h, bias, None), torch.relu(h + bias) * (masks != 0))


def test_bf16_dropout_bits_on_the_cpu_are_the_points_splitmix64_stream():
    model = StackedTwoTower([init_state(1, 4, [], 2, seed=0)] * 2, torch.ones(10, 4), dropout=[0.3, 0.5],
                            seeds=[11, 12], dtype=torch.bfloat16)
    for draw in range(2):  # the second draw continues the stream
        keep = model._keep_masks((64, 10))  # 640 units: 160 words
        words = np.array(splitmix64(12, 160 * (draw + 1))[160 * draw:], dtype=np.uint64)
        bits = torch.from_numpy(words.view(np.int16).copy()).view(64, 10)
        assert torch.equal(keep[1], torch.where(bits <= model.keep_below[1], -1, 0).to(torch.int16))


def test_bf16_hidden_layer_passes_the_gradient_where_the_unit_survives():
    h = torch.randn(2, 300, 40, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(2, 1, 40, dtype=torch.bfloat16, requires_grad=True)
    keep = torch.randint(0, 2, h.shape, dtype=torch.int16).neg_()  # -1 kept, 0 dropped
    out = _BiasReluDrop.apply(h, bias, lambda pre, b: torch.relu(pre + b) * (keep != 0))
    grad = torch.randn_like(out)
    out.backward(grad)
    passed = grad * ((h.detach() + bias.detach() > 0) & (keep != 0))
    assert torch.equal(h.grad, passed)
    assert torch.equal(bias.grad, passed.sum(1, keepdim=True))


def test_bf16_tower_without_dropout_matches_fp32_and_dropout_keeps_the_mean():
    feats = torch.as_tensor(np.random.default_rng(3).normal(size=(256, 16)).astype(np.float32))
    state = init_state(n_users=2, d_in=16, hidden=[64], dim=8, seed=1)
    items = torch.arange(256)
    fp32 = StackedTwoTower([state], feats, dropout=[0.0], seeds=[0]).item_vectors(items, training=True)
    bf16 = StackedTwoTower([state], feats, dropout=[0.0], seeds=[0], dtype=torch.bfloat16)
    torch.testing.assert_close(bf16.item_vectors(items, training=True), fp32, rtol=0.05, atol=0.05)
    # With dropout, averaged over many draws, the output's mean is the no-dropout output's
    # (the tower's last layer is linear in the dropped units): the 1/keep scale is applied.
    dropped = StackedTwoTower([state], feats, dropout=[0.5], seeds=[0], dtype=torch.bfloat16)
    with torch.no_grad():
        mean = torch.stack([dropped.item_vectors(items, training=True) for _ in range(200)]).mean(0)
    assert (mean - fp32).abs().mean().item() < 0.1 * fp32.abs().mean().item()


def test_bf16_reaches_fp32_validation_recall_within_the_seed_spread():
    """The equality check of benchmarks/precision_check.py at small scale: validation Recall@10
    after a fixed number of epochs, four seeds in each dtype."""
    split, feats = planted(seed=2)
    config = TrainConfig.from_params({**SMALL, "lr": [0.01], "dropout": [0.3]})
    fp32 = recall_after(split, feats, config, seeds=[0, 1, 2, 3], precision="fp32", epochs=15)
    bf16 = recall_after(split, feats, config, seeds=[0, 1, 2, 3], precision="bf16", epochs=15)
    assert fp32 != bf16  # bf16 really ran: rounding changes the trajectories
    spread = max(np.ptp(fp32), np.ptp(bf16))
    assert spread > 0
    assert abs(np.mean(bf16) - np.mean(fp32)) <= spread, (fp32, bf16)
    assert np.mean(fp32) > 0.3  # it learned something (Item Popularity gets about 0.2 here)


def test_bf16_pads_the_distinct_items_to_few_shapes_without_changing_the_gradient():
    assert pad_rows(torch.arange(3), 4).tolist() == [0, 1, 2, 0]
    assert pad_rows(torch.arange(8), 4).tolist() == list(range(8))
    # A padded row repeats an item but is never selected: the loss and every gradient are those of
    # the unpadded tower, up to bf16 rounding.
    feats = torch.as_tensor(np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32))
    state = init_state(n_users=6, d_in=8, hidden=[16], dim=4, seed=2)
    users, items = torch.tensor([0, 1, 2, 3, 4, 5, 0]), torch.tensor([3, 3, 7, 9, 20, 29, 39])
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1], dtype=torch.float32)
    grads = []
    for step in (64, 1):
        model = StackedTwoTower([state], feats, dropout=[0.0], seeds=[0], dtype=torch.bfloat16)
        assert model.row_step == 64
        model.row_step = step
        stacked_loss(model.logits(users, items), labels).backward()
        grads.append({name: p.grad.clone() for name, p in model.params.items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-2, atol=1e-3)
