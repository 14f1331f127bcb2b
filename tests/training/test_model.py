"""The stacked two-tower model computes exactly what the per-sample reference computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xreflect.training import cpu_kernels, model as model_module
from xreflect.training.model import (StackedAdamW, StackedTwoTower, TwoTower, distinct_items, feature_rows, gather_rows,
                                     init_state, pair_dots, score_state, stacked_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "on_test_device")


def features(n_items=12, d=6, seed=0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n_items, d)).astype(np.float32))


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_per_grid_point(fused):
    """Both the fused kernel and the plain ops (torch builds without the kernel)."""
    torch.manual_seed(0)
    lrs = [0.1, 0.01, 0.001]
    params = {"x": torch.randn(3, 5, 4, requires_grad=True)}
    refs = [params["x"][g].detach().clone().requires_grad_(True) for g in range(3)]
    opts = [torch.optim.AdamW([r], lr=lr, weight_decay=0.0005) for r, lr in zip(refs, lrs)]
    stacked = StackedAdamW(params, lrs, 0.0005, fused=fused)
    for _ in range(5):
        grad = torch.randn(3, 5, 4)
        params["x"].grad = grad.clone()
        stacked.step(params)
        for g in range(3):
            refs[g].grad = grad[g].clone()
            opts[g].step()
    for g in range(3):
        torch.testing.assert_close(params["x"][g].detach(), refs[g].detach())


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_grouped_by_lr_changes_no_value(fused):
    """Grid points that share a learning rate are updated in one call; each must come out bit for
    bit as when it is updated alone."""
    torch.manual_seed(0)
    lrs = [0.1, 0.01, 0.1, 0.01, 0.001]
    params = {"x": torch.randn(5, 7, 4, requires_grad=True), "b": torch.randn(5, 1, 4, requires_grad=True)}
    alone = [{n: p[g:g + 1].detach().clone().requires_grad_(True) for n, p in params.items()} for g in range(5)]
    stacked = StackedAdamW(params, lrs, 0.0005, fused=fused)
    singles = [StackedAdamW(alone[g], [lrs[g]], 0.0005, fused=fused) for g in range(5)]
    for _ in range(4):
        grads = {n: torch.randn(p.shape) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        stacked.step(params)
        for g in range(5):
            for n, p in alone[g].items():
                p.grad = grads[n][g:g + 1].clone()
            singles[g].step(alone[g])
    for g in range(5):
        for n in params:
            assert torch.equal(params[n][g:g + 1].detach(), alone[g][n].detach())


def test_gather_rows_is_index_select_along_dim_1_forward_and_backward():
    """The flat gather gives the same values and, with many samples per row, the same gradient
    sums in the same order as index_select along dim 1 (bit for bit)."""
    torch.manual_seed(0)
    table = torch.randn(3, 40, 8, requires_grad=True)
    index = torch.randint(0, 40, (500,))  # ~12 samples per row: the order of the sums matters
    weight = torch.randn(3, 500, 8)
    (gather_rows(table, index) * weight).sum().backward()
    flat_value, flat_grad = gather_rows(table, index).detach(), table.grad.clone()
    table.grad = None
    (table.index_select(1, index) * weight).sum().backward()
    assert torch.equal(flat_value, table.index_select(1, index).detach())
    assert torch.equal(flat_grad, table.grad)


@pytest.mark.parametrize("backward", ["C loop", "torch ops"])
def test_pair_dots_are_the_plain_product_bit_for_bit_blocked_or_not(monkeypatch, backward):
    """Scores and both tables' gradients, over several blocks and a short last one, with ~25
    samples per user row (the gradient sums' order matters), against the product written out in
    torch ops; the backward in the C loop (cpu_kernels; on a GPU: torch ops) or in torch ops."""
    if backward == "torch ops":
        monkeypatch.setattr(cpu_kernels, "_loaded", (None, "turned off by the test"))
    elif cpu_kernels.load() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(model_module, "PAIR_BLOCK", 64)
    gen = torch.Generator().manual_seed(0)
    users_table = torch.randn(3, 40, 16, generator=gen).requires_grad_(True)
    items_table = torch.randn(3, 30, 16, generator=gen).requires_grad_(True)
    users, items = torch.randint(0, 40, (1000,), generator=gen), torch.randint(0, 30, (1000,), generator=gen)
    grad = torch.randn(3, 1000, generator=gen)
    results = []
    for blocked in (True, False, "plain"):
        scores = ((gather_rows(users_table, users) * gather_rows(items_table, items)).sum(-1) if blocked == "plain"
                  else pair_dots(users_table, items_table, users, items, blocked))
        scores.backward(grad)
        results.append((scores.detach(), users_table.grad, items_table.grad))
        users_table.grad = items_table.grad = None
    for blocked_value, unblocked_value, plain_value in zip(*results):
        assert torch.equal(blocked_value, plain_value) and torch.equal(unblocked_value, plain_value)


def test_pair_dots_are_blocked_on_one_cpu_thread_with_a_large_product():
    """Blocked only where it measured faster: one CPU thread (a placement.workers process), a product
    of at least BLOCKED_MIN elements; a GPU and several threads keep one launch per operation."""
    def blocked(groups: int, threads: int) -> bool:
        torch.set_num_threads(threads)
        table = torch.zeros(groups, 10, 128, requires_grad=True)
        index = torch.zeros(4096, dtype=torch.int64)
        return getattr(pair_dots(table, table, index, index).grad_fn, "block", None) is not None
    large = -(-model_module.BLOCKED_MIN // (4096 * 128))  # grid points that make the product large
    if torch.get_default_device().type != "cpu":
        assert not blocked(large, 1)
        return
    assert blocked(large, 1) and not blocked(large - 1, 1) and not blocked(large, 2)


def test_stacked_training_is_the_same_blocked_or_not():
    """A few dropout steps of a 3-point stack: every parameter the same bits either way."""
    feats = features(n_items=50, d=6)
    states = [init_state(20, 6, [8], 4, seed=s) for s in range(3)]
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 20, (300,), generator=gen), torch.randint(0, 50, (300,), generator=gen),
                torch.randint(0, 2, (300,), generator=gen).float()) for _ in range(4)]
    trained = []
    for blocked in (True, False):
        model = StackedTwoTower(states, feats, dropout=[0.1, 0.3, 0.5], seeds=[0, 1, 2])
        model.blocked_pair_dots = blocked
        optimizer = StackedAdamW(model.params, [0.01, 0.003, 0.001], 0.0005)
        for users, items, labels in batches:
            stacked_loss(model.logits(users, items), labels).backward()
            optimizer.step(model.params)
        trained.append({name: p.detach() for name, p in model.params.items()})
    for name in trained[0]:
        assert torch.equal(trained[0][name], trained[1][name]), name


def test_distinct_items_is_torch_unique_with_inverse():
    gen = torch.Generator().manual_seed(0)
    for n_items, size in ((50, 400), (3706, 4096), (7, 1), (1000, 10)):  # dense, ML-1M-like, tiny, sparse
        items = torch.randint(0, n_items, (size,), generator=gen)
        distinct, inverse = distinct_items(items, n_items)
        expected, expected_inverse = torch.unique(items, return_inverse=True)
        assert torch.equal(distinct, expected) and torch.equal(inverse, expected_inverse)


def test_feature_rows_is_indexing_for_one_and_two_dimensional_items():
    table = features(n_items=30, d=5)
    for items in (torch.tensor([3, 0, 3, 29]), torch.tensor([[1, 2], [2, 7], [0, 0]])):
        assert torch.equal(feature_rows(table, items), table[items])


@pytest.mark.parametrize("hidden", [[], [8, 5]])
def test_one_step_without_dropout_equals_reference(hidden):
    """Item tower once per distinct item (batch with repeated items) == once per sample."""
    feats = features()
    state = init_state(n_users=4, d_in=6, hidden=hidden, dim=3, seed=1)
    users = torch.tensor([0, 1, 1, 2, 3, 3, 0])
    items = torch.tensor([5, 5, 2, 7, 5, 2, 11])  # item 5 three times, item 2 twice
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.float32)
    lrs = [0.01, 0.003]
    stacked = StackedTwoTower([state, state], feats, dropout=[0.0, 0.0], seeds=[1, 2])
    optimizer = StackedAdamW(stacked.params, lrs, 0.0005)
    stacked_loss(stacked.logits(users, items), labels).backward()
    optimizer.step(stacked.params)
    for g, lr in enumerate(lrs):
        ref = TwoTower(state, feats, dropout=0.0)
        opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.0005)
        torch.nn.functional.binary_cross_entropy_with_logits(ref(users, items), labels).backward()
        opt.step()
        for name, value in ref.state().items():
            np.testing.assert_allclose(stacked.state(g)[name], value, rtol=1e-5, atol=1e-6)


def test_dropout_rate_per_grid_point():
    feats = torch.ones(2000, 4)
    state = init_state(n_users=1, d_in=4, hidden=[], dim=2, seed=0)
    model = StackedTwoTower([state] * 2, feats, dropout=[0.1, 0.5], seeds=[0, 1])
    dropped = model._dropout(torch.ones(2, 2000, 50))
    # Zeros at the rate; survivors scaled by 1/(1-p) so the mean stays 1.
    assert abs((dropped[0] == 0).float().mean().item() - 0.1) < 0.01
    assert abs((dropped[1] == 0).float().mean().item() - 0.5) < 0.01
    assert set(torch.unique(dropped[1]).tolist()) == {0.0, 2.0}
    assert abs(dropped.mean().item() - 1.0) < 0.02


def test_scores_and_keep():
    feats = features()
    states = [init_state(4, 6, [5], 3, seed=s) for s in range(3)]
    model = StackedTwoTower(states, feats, dropout=[0.1, 0.2, 0.3], seeds=[0, 1, 2])
    users = torch.arange(4)
    items = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    scores = model.scores(users, items)
    for g in range(3):
        torch.testing.assert_close(scores[g], score_state(states[g], feats, users, items))
        # By hand for user 1, item 4: u . (relu(x W0 + b0) W1 + b1)
        s = states[g]
        h = np.maximum(feats[4].cpu().numpy() @ s["w0"] + s["b0"], 0) @ s["w1"] + s["b1"]
        assert scores[g, 1, 1].item() == pytest.approx(float(s["user"][1] @ h), rel=1e-5)
    model.keep([2])
    assert model.size == 1
    for name, value in states[2].items():
        np.testing.assert_array_equal(model.state(0)[name], value)
