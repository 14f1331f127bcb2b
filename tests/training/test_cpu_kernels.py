"""cpu_kernels: the C loops (a bf16 hidden layer's bias, ReLU and dropout; the sample scores'
backward) give the bits of the torch ops they replace, training gives the same parameters with or
without them, and a machine without a C compiler trains in torch ops and says so once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from xreflect.training import cpu_kernels
from xreflect.training.model import StackedAdamW, StackedTwoTower, _bits_to_keep, init_state, stacked_loss
from xreflect.training.random_bits import SplitMix64Streams

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def kernels():
    library, why = cpu_kernels.compile_kernels()
    if library is None:
        pytest.skip(f"no C kernels on this machine: {why}")
    return library


@pytest.fixture
def kernel_off(monkeypatch):
    """The torch-ops path, as on a machine without a C compiler."""
    monkeypatch.setattr(cpu_kernels, "_loaded", (None, "turned off by the test"))


def torch_ops(pre: torch.Tensor, bias: torch.Tensor, drawn_rows: int, seed: int, keep_below: int) -> torch.Tensor:
    """What the kernel replaces: the bias add, ReLU and AND of the keep mask from the stream's words."""
    rows, width = pre.shape
    words = torch.zeros(rows * width // 4, dtype=torch.int64)
    SplitMix64Streams([seed]).fill(0, words[:drawn_rows * width // 4])
    keep = _bits_to_keep(words.view(torch.int16), torch.tensor(keep_below, dtype=torch.int16)).view(rows, width)
    out = torch.add(pre, bias).clamp_min_(0)
    out.view(torch.int16).bitwise_and_(keep)
    return out


def awkward_values(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and a bias whose sums round both ways, cancel to zero, overflow and hit
    subnormals, zeros of both signs, infinities and NaN."""
    gen = torch.Generator().manual_seed(seed)
    pre = (torch.randn(rows, width, generator=gen) * 3).to(BF16)
    bias = (torch.randn(1, width, generator=gen)).to(BF16)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"), 1e-40, -1e-40,
                            3e38, -3e38, 1.0, -1.0], dtype=BF16)
    n = min(2 * len(special), pre.numel())
    pre.view(-1)[:n] = special.repeat(2)[:n]  # special values meet special values of the bias
    bias[0, :min(len(special), width)] = special.flip(0)[:width]
    pre[-1, :width] = -bias[0]  # exact cancellation: +0
    return pre, bias


def same_bits_up_to_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])


@pytest.mark.parametrize("rows, width, drawn", [(64, 512, 64), (37, 12, 37), (37, 12, 20), (5, 4, 0), (1, 256, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bias_relu_drop_writes_the_bits_of_the_torch_ops(kernels, rows, width, drawn, threads):
    pre, bias = awkward_values(rows, width, seed=rows + width)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, keep_below in ((3, 26213), (2 ** 64 - 5, -32768), (7, 32767), (11, 0)):
            out = torch.full_like(pre, 7.0)
            cpu_kernels.bias_relu_drop(kernels, pre, bias, out, drawn, seed, keep_below)
            expected = torch_ops(pre, bias, drawn, seed, keep_below)
            assert same_bits_up_to_nan(out, expected), (seed, keep_below)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dim", [128, 13])
def test_pair_dots_backward_adds_the_rows_as_torch_does(kernels, threads, dim):
    """The gradients' rows get ~20 samples each (their order matters), and a column count the
    threads split unevenly."""
    gen = torch.Generator().manual_seed(dim)
    users, items = torch.randn(50, dim, generator=gen), torch.randn(40, dim, generator=gen)
    user_rows, item_rows = torch.randint(0, 50, (1000,), generator=gen), torch.randint(0, 40, (1000,), generator=gen)
    grad = torch.randn(1000, generator=gen)
    expected_users = torch.zeros_like(users).index_add_(0, user_rows, grad[:, None] * items[item_rows])
    expected_items = torch.zeros_like(items).index_add_(0, item_rows, grad[:, None] * users[user_rows])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        users_grad, items_grad = cpu_kernels.pair_dots_backward(kernels, users, items, user_rows, item_rows, grad)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(users_grad, expected_users) and torch.equal(items_grad, expected_items)


def train(states, feats, steps=4, row_split=None, split_batches=False, dtype=BF16):
    model = StackedTwoTower(states, feats, dropout=[0.1, 0.5, 0.3][:len(states)], seeds=[5, 6, 7][:len(states)],
                            dtype=dtype, row_split=row_split)
    optimizer = StackedAdamW(model.params, [0.01] * len(states), 0.0005)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        shape = (2, 40) if split_batches else (40,)
        users = torch.randint(0, 6, shape, generator=gen)
        items = torch.randint(0, len(feats), shape, generator=gen)
        labels = torch.randint(0, 2, shape, generator=gen).float()
        stacked_loss(model.logits(users, items), model.row_labels(labels)).backward()
        optimizer.step(model.params)
    return model


@pytest.mark.parametrize("hidden, split_batches, dtype", [([32, 16], False, BF16), ([32], True, BF16),
                                                          ([10], False, BF16), ([32, 16], False, torch.float32)])
def test_training_reaches_the_same_parameters_with_or_without_the_kernels(kernels, monkeypatch, hidden,
                                                                          split_batches, dtype):
    """A 3-point bf16 stack (and 3 rows over 2 stacked splits, whose padding rows draw no bits; a
    width bias_relu_drop does not take, 10, which runs its torch ops either way; fp32, where only
    the sample scores' backward is in C)."""
    feats = torch.randn(300, 24, generator=torch.Generator().manual_seed(1))
    states = [init_state(6, 24, hidden, 8, seed=s) for s in range(3)]
    row_split = [0, 1, 1] if split_batches else None
    params, streams = {}, {}
    for on in (True, False):
        monkeypatch.setattr(cpu_kernels, "_loaded", (kernels, "") if on else (None, "off"))
        model = train(states, feats, row_split=row_split, split_batches=split_batches, dtype=dtype)
        params[on] = {name: p.detach().clone() for name, p in model.params.items()}
        streams[on] = list(model.bit_streams.states) if dtype == BF16 else None
    for name in params[True]:
        assert torch.equal(params[True][name], params[False][name]), name
    assert streams[True] == streams[False]  # both moved each point's stream by as many words


def test_without_a_compiler_training_runs_in_torch_ops_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setenv("CC", "no-such-compiler-xreflect")
    monkeypatch.setattr(cpu_kernels, "_loaded", None)
    feats = torch.randn(300, 24, generator=torch.Generator().manual_seed(1))
    model = train([init_state(6, 24, [32], 8, seed=0)] * 2, feats, steps=2)
    assert all(torch.isfinite(p).all() for p in model.params.values())
    assert cpu_kernels.load() is None
    err = capsys.readouterr().err
    assert err.count("training on the CPU runs its C loops as torch ops (same results, slower)") == 1
    assert "no C compiler 'no-such-compiler-xreflect' on PATH (set CC to one)" in err


def test_a_compiler_that_fails_is_reported_with_its_message(tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fakecc: error: unsupported option' >&2\nexit 1\n")
    fake.chmod(0o755)
    library, why = cpu_kernels.compile_kernels(str(fake))
    assert library is None
    assert why.startswith(f"{fake} failed (") and "fakecc: error: unsupported option" in why


LATER_PROCESS = """
import subprocess, sys
from xreflect.training import cpu_kernels
if sys.argv[1] == "no compiling":
    subprocess.run = lambda *args, **kwargs: sys.exit("compiled again")
assert cpu_kernels.load() is not None
"""


def test_a_build_is_kept_for_later_processes_and_a_damaged_one_is_rebuilt(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_loaded", None)
    assert cpu_kernels.load() is not None
    kept = list((tmp_path / "kernels").iterdir())
    assert [p.name for p in kept] == [cpu_kernels.library_path(os.environ.get("CC") or "cc").name] and kept[0].suffix == ".so"

    def later_process(mode: str) -> None:
        subprocess.run([sys.executable, "-c", LATER_PROCESS, mode], check=True, env=os.environ.copy())

    later_process("no compiling")  # loads the kept build
    # A damaged file (replaced, never written over: processes map the old one) is built again.
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"not a library")
    damaged.replace(kept[0])
    later_process("may compile")
    assert kept[0].read_bytes()[:4] == b"\x7fELF"


def test_a_compiler_without_openmp_builds_serial_loops_with_the_same_bits(monkeypatch):
    """The second flag set (no -fopenmp, no -march=native): what a compiler without OpenMP builds."""
    monkeypatch.setattr(cpu_kernels, "FLAG_SETS", cpu_kernels.FLAG_SETS[1:])
    serial, why = cpu_kernels.compile_kernels()
    if serial is None:
        pytest.skip(f"no C compiler here: {why}")
    pre, bias = awkward_values(37, 12, seed=3)
    out = torch.empty_like(pre)
    cpu_kernels.bias_relu_drop(serial, pre, bias, out, 30, 5, 26213)
    assert same_bits_up_to_nan(out, torch_ops(pre, bias, 30, 5, 26213))
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(20, 13, generator=gen), torch.randn(10, 13, generator=gen)
    user_rows, item_rows = torch.randint(0, 20, (300,), generator=gen), torch.randint(0, 10, (300,), generator=gen)
    grad = torch.randn(300, generator=gen)
    users_grad, items_grad = cpu_kernels.pair_dots_backward(serial, users, items, user_rows, item_rows, grad)
    assert torch.equal(users_grad, torch.zeros_like(users).index_add_(0, user_rows, grad[:, None] * items[item_rows]))
    assert torch.equal(items_grad, torch.zeros_like(items).index_add_(0, item_rows, grad[:, None] * users[user_rows]))
