"""Random bits for bf16 dropout on the CPU: each grid point's SplitMix64 stream, made of torch ops.

SplitMix64 (Steele, Lea and Flood, 2014; the generator that seeds the xoshiro family) is counter
based: its i-th output is a fixed mix of `seed + (i + 1) * GAMMA` (mod 2^64). A block of outputs is
therefore a dozen whole-tensor integer operations, which torch vectorises and spreads over its
threads, written straight into the mask tensor. numpy's SFC64, which it replaces, hands out one
word per call of a C function pointer on one core, into a new array that then had to be copied into
torch: for a 9-point MovieLens-1M batch's first dropout layer (2,304 x 512 units, 16 bits each)
the masks took 5.6 ms that way and 3.5 ms this way (2 AMD EPYC cores). Where the C loop of
cpu_kernels.c is built, it computes the same words inside the layer's single pass (take() hands
it a stream's position); these torch ops remain the path without a compiler, for a linear
tower's dropout of its input features, and for hidden widths that are not a multiple of 4.

torch has no unsigned 64-bit shift on the CPU, so the logical shifts are arithmetic shifts with
the sign-extended bits masked off, and the constants are passed as their signed int64 patterns;
int64 addition and multiplication wrap modulo 2^64. tests/training/test_random_bits.py checks the
words against a plain-Python SplitMix64.
"""
from __future__ import annotations

import torch
from torch import Tensor

GAMMA = 0x9E3779B97F4A7C15
# (shift, multiplier) of the output mix: z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31
MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))
MASK64 = (1 << 64) - 1


def as_int64(value: int) -> int:
    """The signed int64 with the same 64 bits as `value` mod 2^64."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


class SplitMix64Streams:
    """One SplitMix64 stream per row (grid point), each seeded with its point's seed; a row's
    words continue where its previous draw stopped, whatever the other rows draw."""

    def __init__(self, seeds: list[int]):
        self.states = [seed & MASK64 for seed in seeds]
        self._steps = torch.empty(0, dtype=torch.int64)  # (i + 1) * GAMMA for i < len: the counter offsets

    def fill(self, row: int, out: Tensor) -> Tensor:
        """Write the next len(out) words of `row`'s stream into `out` (1-d, int64, contiguous)."""
        n = len(out)
        if len(self._steps) < n or self._steps.device != out.device:
            self._steps = torch.arange(1, n + 1, dtype=torch.int64, device=out.device).mul_(as_int64(GAMMA))
        torch.add(self._steps[:n], as_int64(self.take(row, n)), out=out)
        shifted = torch.empty_like(out)
        for shift, multiplier in MIX:
            torch.bitwise_right_shift(out, shift, out=shifted).bitwise_and_((1 << (64 - shift)) - 1)
            out.bitwise_xor_(shifted)
            if multiplier is not None:
                out.mul_(as_int64(multiplier))
        return out

    def take(self, row: int, n: int) -> int:
        """The state `row`'s next n words start from (word i mixes state + (i + 1) * GAMMA), moving
        the stream past them: for a caller that computes the words itself (cpu_kernels.c)."""
        state = self.states[row]
        self.states[row] = (state + n * GAMMA) & MASK64
        return state

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows' streams, in this order (as StackedTwoTower.keep)."""
        self.states = [self.states[row] for row in rows]
