"""benchmarks/step_parts.py: its variants, the order it times them in, and a run at demo scale."""
from __future__ import annotations

import re

import torch

from benchmarks import step_parts
from xreflect.training.epochs import Samples
from xreflect.training.model import init_state


def test_bare_relu_leaves_out_the_bias_and_dropout_and_draws_no_bits():
    model = step_parts.BareRelu([init_state(1, 4, [8], 2, seed=0)] * 2, torch.ones(10, 4), dropout=[0.5, 0.5],
                                seeds=[0, 1], dtype=torch.bfloat16)
    state = list(model.bit_streams.states)
    pre = torch.randn(2, 30, 8, dtype=torch.bfloat16)
    assert torch.equal(model._bias_relu_drop(pre, torch.ones(2, 1, 8, dtype=torch.bfloat16), None), torch.relu(pre))
    assert model.bit_streams.states == state


def test_each_step_runs_its_batches_back_to_back_and_the_first_round_is_not_timed():
    calls = []
    steps = {name: (lambda part, name=name: calls.append((name, int(part.items[0])))) for name in ("a", "b")}
    parts = [Samples(torch.zeros(2, dtype=torch.int64), torch.tensor([i, i]), torch.zeros(2)) for i in (0, 1)]
    seconds = step_parts.time_in_turns(steps, parts, rounds=3)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1)] * 3
    assert set(seconds) == {"a", "b"}


def test_a_run_at_demo_scale_prints_every_part(capsys):
    step_parts.main(["--scale", "demo", "--dim", "32", "--points", "2", "--batches", "2", "--rounds", "2"])
    out = capsys.readouterr().out
    for part in ("hidden layers' bias and dropout", "optimizer (AdamW)", "user side and loss",
                 "tower beyond the roofline"):
        assert re.search(rf"{re.escape(part)}.*\s-?[\d.]+$", out, re.MULTILINE), part
    assert re.search(r"whole step / roofline: [\d.]+x", out)
