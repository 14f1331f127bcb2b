"""Which floating-point type the towers' matmuls run in: `train.precision: auto | fp32 | bf16`.

bf16 pays only where the hardware multiplies bf16 natively: on a CPU with AMX (amx_bf16) or
AVX-512 BF16 (avx512_bf16) a whole training epoch at MovieLens-1M size ran 3.0-3.9x faster than
fp32 (AMD EPYC, 2 cores; benchmarks/train_speed.py); on a CPU without them bf16 is emulated and slower than fp32. `auto` therefore picks bf16 on such a CPU and
fp32 otherwise. On a GPU too: there the fp32 matmuls already run on TF32 tensor cores
(stages/train.py allows TF32) and an ML-1M epoch is bound by kernel launches, not arithmetic, so
bf16's extra casts made the epoch slower (NVIDIA H200, ML-1M size: 0.80-0.93x the speed of fp32). `bf16` set explicitly is obeyed everywhere. Only the item tower's matmuls and activations use it:
master weights, the loss and the optimizer state stay fp32 (see StackedTwoTower), and validation,
selection and test scoring run in fp32 from the master weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from xreflect.core.config import ParamsError
from xreflect.training.config import PRECISIONS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# /proc/cpuinfo flags of native bf16 matrix arithmetic (Intel Sapphire Rapids and later, AMD Zen 4+).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo), or what torch's own CPU probe says elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    probes = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    return {flag for flag, probe in probes.items() if probe is not None and probe()}


def cpu_native_bf16() -> list[str]:
    """The native bf16 flags this CPU has that torch's CPU matmul backend (oneDNN) can use."""
    if not torch.backends.mkldnn.is_available():
        return []
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """('fp32' or 'bf16', why) for `train.precision` on `device`."""
    if setting not in PRECISIONS:
        raise ParamsError(f"params.yaml: train.precision is {setting!r}; use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        where = f"GPU {torch.cuda.get_device_name(device)} {'supports' if native else 'lacks'} bf16"
        if setting == "auto":  # measured on an H200 (benchmarks/gpu_check.sh): see the module docstring
            return "fp32", f"train.precision auto: {where}, but fp32 (TF32 tensor cores) is as fast there"
    else:
        flags = cpu_native_bf16()
        native = bool(flags)
        where = (f"CPU has native bf16 matmul ({', '.join(flags)})" if native
                 else "CPU has no native bf16 matmul (no amx_bf16 or avx512_bf16 flag)")
    if setting == "auto":
        return ("bf16" if native else "fp32"), f"train.precision auto: {where}"
    slow = setting == "bf16" and not native
    return setting, f"train.precision {setting} as set ({where}{'; bf16 is emulated and slow here' if slow else ''})"
