"""SplitMix64 streams made of torch ops (xreflect/training/random_bits.py) against plain Python."""
from __future__ import annotations

import torch

from xreflect.training.random_bits import SplitMix64Streams, as_int64

MASK = (1 << 64) - 1


def splitmix64(seed: int, n: int) -> list[int]:
    """The first n outputs of SplitMix64 seeded with `seed`, as published (unsigned 64-bit)."""
    state, out = seed & MASK, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def test_words_are_splitmix64_and_each_row_continues_its_own_stream():
    seeds = [0, 2 ** 63 - 25, 12345]  # the top bit set in the states and the products: the sign cases
    streams = SplitMix64Streams(seeds)
    expected = {row: splitmix64(seed, 1500) for row, seed in enumerate(seeds)}
    drawn = {row: [] for row in range(3)}
    for row, n in [(0, 1000), (1, 7), (0, 500), (2, 1500), (1, 1493)]:  # interleaved, uneven draws
        drawn[row] += [w & MASK for w in streams.fill(row, torch.empty(n, dtype=torch.int64)).tolist()]
    assert drawn == expected


def test_keep_drops_rows_and_keeps_the_survivors_positions():
    streams = SplitMix64Streams([5, 6, 7])
    streams.fill(1, torch.empty(10, dtype=torch.int64))
    streams.keep([2, 1])
    out = [w & MASK for w in streams.fill(1, torch.empty(4, dtype=torch.int64)).tolist()]
    assert out == splitmix64(6, 14)[10:]  # row 1 is the old row 1, 10 words in


def test_bits_are_balanced():
    words = SplitMix64Streams([42]).fill(0, torch.empty(1 << 16, dtype=torch.int64))
    bits = torch.stack([(words >> k) & 1 for k in range(64)])  # [64 bit positions, words]
    # each of the 64 bit positions is set in half the words, within 5 standard deviations
    assert ((bits.float().mean(1) - 0.5).abs() < 5 * 0.5 / 256).all()


def test_as_int64_keeps_the_bits():
    for value in (0, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 0x9E3779B97F4A7C15):
        assert as_int64(value) & MASK == value & MASK and -2 ** 63 <= as_int64(value) < 2 ** 63
