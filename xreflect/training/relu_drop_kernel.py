"""bf16 training's hidden-layer pass on the CPU as one C loop: bias, ReLU and the point's dropout.

In torch ops, a hidden layer's bias, ReLU and dropout mask take ~15 passes over memory: a dozen
for the SplitMix64 words (random_bits.py), then the mask, the bias add and the ReLU with the AND.
bias_relu_drop.c does it in one, with the same bits out (a MovieLens-1M batch's 2,304 x 512
layer: 0.71 ms in torch ops, 0.13 ms in C, 2 AMD EPYC cores; README, "Precision").

The C file is compiled once per process, when bf16 training on the CPU first needs it, with the
machine's C compiler (`$CC`, else `cc`; ~0.2 s), into a temporary directory. Without a compiler
(or if it fails) training runs the torch ops instead, with the same results, and says so once.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from xreflect.core.io import log_stderr

SOURCE = Path(__file__).with_name("bias_relu_drop.c")
# OpenMP spreads the rows over torch's threads; a compiler without it still builds a serial loop.
FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3"])

Kernel = Callable[..., None]  # the C function, through ctypes

_loaded: tuple[Kernel | None, str] | None = None  # (the function or None, why not)


def compile_kernel(compiler: str | None = None) -> tuple[Kernel | None, str]:
    """(bias_relu_drop from a fresh build, "") or (None, why it could not be built)."""
    compiler = compiler or os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return None, f"no C compiler {compiler!r} on PATH (set CC to one)"
    errors = []
    with tempfile.TemporaryDirectory(prefix="xreflect-kernel-") as tmp:
        library = Path(tmp) / "bias_relu_drop.so"
        for flags in FLAG_SETS:
            try:
                built = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(library)],
                                       capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                return None, f"{compiler} could not run: {error}"
            if built.returncode == 0:
                function = ctypes.CDLL(str(library)).bias_relu_drop  # stays mapped after the file is gone
                function.restype = None
                function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_uint64, ctypes.c_int16,
                                                                                     ctypes.c_int]
                return function, ""
            errors.append(f"{' '.join(flags)}: {(built.stderr.strip().splitlines() or ['exit ' + str(built.returncode)])[-1]}")
    return None, f"{compiler} failed ({'; '.join(errors)})"


def load() -> Kernel | None:
    """The compiled kernel, built on the first call of the process; None (said once) where it can't be."""
    global _loaded
    if _loaded is None:
        _loaded = compile_kernel()
        if _loaded[0] is None:
            log_stderr(f"bf16 dropout on the CPU runs in torch ops (same results, slower): {_loaded[1]}")
    return _loaded[0]


def bias_relu_drop(function: Kernel, pre: Tensor, bias: Tensor, out: Tensor, drawn_rows: int,
                   state: int, keep_below: int) -> None:
    """out = relu(pre + bias) with the dropped units zeroed, for one grid point: pre and out
    [rows, width] bf16, bias [1, width] bf16, all contiguous on the CPU, width a multiple of 4;
    the bits are the point's SplitMix64 words from `state` on (rows from drawn_rows on: none)."""
    assert pre.is_contiguous() and bias.is_contiguous() and out.is_contiguous() and pre.shape[-1] % 4 == 0
    rows, width = pre.shape
    function(pre.data_ptr(), bias.data_ptr(), out.data_ptr(), rows, width, drawn_rows, state, keep_below,
             torch.get_num_threads())
