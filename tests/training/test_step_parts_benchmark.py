"""benchmarks/step_parts.py: its variants, the order it times them in, and a run at demo scale."""
from __future__ import annotations

import re

import torch

from benchmarks import step_parts
from xreflect.training.epochs import Samples
from xreflect.training.model import init_state


def test_keep_all_draws_no_bits_and_keeps_every_unit():
    model = step_parts.KeepAll([init_state(1, 4, [8], 2, seed=0)] * 2, torch.ones(10, 4), dropout=[0.5, 0.5],
                               seeds=[0, 1], dtype=torch.bfloat16)
    state = list(model.bit_streams.states)
    assert torch.equal(model._keep_masks((30, 8)), torch.full((2, 30, 8), -1, dtype=torch.int16))
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
    for part in ("dropout's random bits", "optimizer (AdamW)", "user side and loss", "tower beyond the roofline"):
        assert re.search(rf"{re.escape(part)}.*\s-?[\d.]+$", out, re.MULTILINE), part
    assert re.search(r"whole step / roofline: [\d.]+x", out)
