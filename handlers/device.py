"""Where a worker runs and what its CPU can do: probed at load time, never assumed from one machine.

`fastest_cpu_dtype` is the export dtype this host serves fastest (bf16 where the CPU has bf16 instructions,
else fp32); `textclf demo` exports that, so the bf16 test exists once.
"""
from __future__ import annotations

import torch

# Dynamically quantized Linear layers (export --quantize int8) have CPU kernels only.
CPU_ONLY_VARIANTS = ("int8",)


def choose_device(cuda_available: bool, gpu_id, variant: str = "fp32") -> str:
    """TorchServe passes gpu_id=None to CPU workers, and a GPU index when it assigned one."""
    if variant in CPU_ONLY_VARIANTS:
        return "cpu"
    return f"cuda:{gpu_id}" if cuda_available and gpu_id is not None else "cpu"


def cpu_only_warning(variant: str, gpu_id, cuda_available: bool) -> str | None:
    """Said when TorchServe gave a worker a GPU that its model cannot use, so nobody wonders why it is idle."""
    if variant in CPU_ONLY_VARIANTS and cuda_available and gpu_id is not None:
        return (f"{variant} models run on the CPU only; this worker was assigned GPU {gpu_id} and leaves it idle "
                f"(set deviceType: cpu in model-config.yaml, or export fp32/bf16 for GPUs)")
    return None


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN takes a
    reference path: the bf16 MiniLM export ran 8-14x slower than fp32 on an AVX2-only AMD EPYC."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def slow_bf16_warning(variant: str, device: str, has_bf16: bool) -> str | None:
    """What to tell an operator who serves a bf16 bundle on a CPU without bf16 instructions, else None."""
    if variant != "bf16" or not device.startswith("cpu") or has_bf16:
        return None
    return ("bf16 model on a CPU without bf16 instructions (no AVX512-BF16 or AMX): expect it to run 10x or more "
            "slower than the fp32 export; serve an fp32 archive on this host")


def fastest_cpu_dtype() -> str:
    """The export --dtype to serve on this host's CPU: bf16 only where it runs in hardware."""
    return "bf16" if cpu_has_bf16() else "fp32"

