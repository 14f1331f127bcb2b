"""benchmarks/train_speed.py: the two ways it times epochs, and a whole run at demo scale."""
from __future__ import annotations

import re

import torch

from benchmarks import train_speed
from xreflect.training.epochs import Samples


def samples(n: int) -> Samples:
    return Samples(torch.zeros(n, dtype=torch.int64), torch.arange(n), torch.zeros(n))


def recording_steps(calls: list[tuple[str, int]]) -> dict:
    return {name: (lambda part, name=name: calls.append((name, int(part.items[0])))) for name in ("a", "b")}


def test_whole_epochs_run_each_implementations_batches_back_to_back():
    calls: list[tuple[str, int]] = []
    seconds = train_speed.whole_epoch_seconds(recording_steps(calls), samples(10), 4, torch.device("cpu"), rounds=2)
    epoch = [0, 4, 8]  # the first item of each of the 3 batches
    warm_up = [("a", 0), ("b", 0)]
    assert calls == warm_up + [("a", i) for i in epoch] + [("b", i) for i in epoch] + \
        [("a", i) for i in epoch] + [("b", i) for i in epoch]
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def test_interleaved_batches_take_turns():
    calls: list[tuple[str, int]] = []
    train_speed.interleaved_epoch_seconds(recording_steps(calls), samples(10), 4, torch.device("cpu"), None)
    assert calls[2:] == [("a", 0), ("b", 0), ("a", 4), ("b", 4), ("a", 8), ("b", 8)]


def test_a_run_at_demo_scale_prints_every_ratio_line(capsys):
    train_speed.main(["--scale", "demo", "--dims", "32", "--precisions", "fp32", "bf16", "--no-reference",
                      "--whole-epochs", "1"])
    out = capsys.readouterr().out
    assert "[whole epochs in turn, median of 1]" in out
    for precision in ("fp32", "bf16"):
        ratio = re.search(rf"{precision}, epoch / roofline: stack ([\d.]+)x, single ([\d.]+)x", out)
        assert ratio and float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0
