"""Two hot loops of training on the CPU in C (cpu_kernels.c), each one pass where torch ops take several.

- `bias_relu_drop`: a bf16 hidden layer's bias, ReLU and dropout. In torch ops that is ~15
  passes over memory: a dozen for the point's SplitMix64 words (random_bits.py), then the mask,
  the bias add, and the ReLU with the AND. A MovieLens-1M batch's 2,304 x 512 layer: 0.71 ms in
  torch ops, 0.13 ms in C (2 AMD EPYC cores; README, "Precision").
- `pair_dots_backward`: the sample scores' backward (model._PairDots), the gradient rows added
  into the user table's and the item vectors' gradients without first writing them out.

Both give the bits of the torch ops they replace. The C file is compiled when training on the CPU
first needs it, with the machine's C compiler (`$CC`, else `cc`; ~0.2 s), for this CPU
(-march=native), and kept under ${XREFLECT_CACHE_DIR:-.cache}/kernels/ by a hash of the source,
the compiler and the CPU's flags, so each later process (every train stage starts several) loads
it instead. Without a compiler (or if it fails) training runs the torch ops, with the same
results, and says so once per process.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from xreflect.core.io import log_stderr
from xreflect.core.paths import cache_dir
from xreflect.training.precision import cpu_flags

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# OpenMP spreads the work over torch's threads (the same runtime: torch's libgomp, by its soname);
# a compiler without it still builds serial loops. No fused multiply-adds: torch rounds twice.
FLAG_SETS = (["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"], ["-O3", "-ffp-contract=off"])
POINTER, INT64 = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {"bias_relu_drop": [POINTER] * 3 + [INT64] * 3 + [ctypes.c_uint64, ctypes.c_int16, ctypes.c_int],
              "pair_dots_backward": [POINTER] * 7 + [INT64] * 2 + [ctypes.c_int]}

_loaded: tuple[ctypes.CDLL | None, str] | None = None  # (the library or None, why not)


def compile_kernels(compiler: str | None = None, keep_at: Path | None = None) -> tuple[ctypes.CDLL | None, str]:
    """(the library from a fresh build, "") or (None, why it could not be built). The build is
    written to `keep_at` (atomically) where given, else to a temporary directory."""
    compiler = compiler or os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return None, f"no C compiler {compiler!r} on PATH (set CC to one)"
    errors = []
    with tempfile.TemporaryDirectory(prefix="xreflect-kernels-", dir=keep_at.parent if keep_at else None) as tmp:
        path = Path(tmp) / "cpu_kernels.so"
        for flags in FLAG_SETS:
            try:
                built = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(path)],
                                       capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                return None, f"{compiler} could not run: {error}"
            if built.returncode == 0:
                if keep_at:
                    os.replace(path, keep_at)
                return _open(keep_at or path), ""  # stays mapped after its file is gone
            last = (built.stderr.strip().splitlines() or [f"exit {built.returncode}"])[-1]
            errors.append(f"{' '.join(flags)}: {last}")
    return None, f"{compiler} failed ({'; '.join(errors)})"


def library_path(compiler: str) -> Path:
    """Where the build for this source, compiler and CPU is kept."""
    key = "\n".join([SOURCE.read_text(), shutil.which(compiler) or compiler, " ".join(FLAG_SETS[0]),
                     platform.machine(), " ".join(sorted(cpu_flags()))])
    return cache_dir() / "kernels" / f"cpu_kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def load() -> ctypes.CDLL | None:
    """The kernels: the kept build, else a new one (kept); None (said once) where they can't be built."""
    global _loaded
    if _loaded is None:
        _loaded = _kept_or_compiled(os.environ.get("CC") or "cc")
        if _loaded[0] is None:
            log_stderr(f"training on the CPU runs its C loops as torch ops (same results, slower): {_loaded[1]}")
    return _loaded[0]


def _kept_or_compiled(compiler: str) -> tuple[ctypes.CDLL | None, str]:
    if shutil.which(compiler) is None:
        return compile_kernels(compiler)  # says why
    path = library_path(compiler)
    if path.is_file():
        try:
            return _open(path), ""
        except OSError:  # a damaged file: build it again
            pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # nowhere to keep it: this process's build only
        return compile_kernels(compiler)
    return compile_kernels(compiler, path)


def _open(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    for name, argtypes in SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = None, argtypes
    return library


def bias_relu_drop(library: ctypes.CDLL, pre: Tensor, bias: Tensor, out: Tensor, drawn_rows: int,
                   state: int, keep_below: int) -> None:
    """out = relu(pre + bias) with the dropped units zeroed, for one grid point: pre and out
    [rows, width] bf16, bias [1, width] bf16, all contiguous on the CPU, width a multiple of 4;
    the bits are the point's SplitMix64 words from `state` on (rows from drawn_rows on: none)."""
    assert pre.is_contiguous() and bias.is_contiguous() and out.is_contiguous() and pre.shape[-1] % 4 == 0
    rows, width = pre.shape
    library.bias_relu_drop(pre.data_ptr(), bias.data_ptr(), out.data_ptr(), rows, width, drawn_rows, state,
                           keep_below, torch.get_num_threads())


def pair_dots_backward(library: ctypes.CDLL, users: Tensor, items: Tensor, user_rows: Tensor, item_rows: Tensor,
                       grad: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of users [N, dim] and items [M, dim] (fp32, contiguous) for the sample scores
    (users[user_rows] * items[item_rows]).sum(-1) (int64 rows) and their gradient `grad`."""
    grad, user_rows, item_rows = grad.contiguous(), user_rows.contiguous(), item_rows.contiguous()  # kept alive
    assert users.is_contiguous() and items.is_contiguous() and users.dtype == items.dtype == grad.dtype == torch.float32
    users_grad, items_grad = torch.zeros_like(users), torch.zeros_like(items)
    library.pair_dots_backward(users.data_ptr(), items.data_ptr(), user_rows.data_ptr(), item_rows.data_ptr(),
                               grad.data_ptr(), users_grad.data_ptr(), items_grad.data_ptr(), len(user_rows),
                               users.shape[1], torch.get_num_threads())
    return users_grad, items_grad
