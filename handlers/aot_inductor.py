"""AOTInductor behind the runtime interface (handlers/runtimes.py): model.pt2, a package that torch.export and
AOTInductor compiled ahead of time (training.export --format pt2) into a shared library with its weights.

A package is machine code for one device type (and, on a CPU, one instruction set): it is checked against this
worker from the metadata AOTInductor writes into the package's zip, before its library is loaded, so a package
from another machine class is refused with one line instead of failing inside the loader or, worse, crashing the
worker on an illegal instruction. Serving needs no compiler: only export compiles.
"""
from __future__ import annotations

import json
import logging
import platform
import zipfile
from pathlib import Path

import torch
from torch._inductor import aoti_load_package

from handlers.bundle import BundleError
from handlers.runtimes import RUNTIMES

logger = logging.getLogger(__name__)
# The batch dimension is exported dynamic from 1 to this bound (training/export_formats.py reads it); a longer
# call, which no handler batch reaches (explanations score about 520 rows), runs in slices of it.
MAX_BATCH = 4096
MODEL_NAME = "model"  # the name aoti_compile_and_package gives the one model of a package
EXPORT_HINT = "export it on the device that will serve it (textclf export --format pt2 --device {device})"
# AOTI_CPU_ISA words (torch._inductor.cpu_vec_isa) and this CPU's probes for them; a word not listed is not checked.
CPU_FEATURES = {"AVX2": "_is_avx2_supported", "AVX512": "_is_avx512_supported", "AVX512_VNNI": "_is_vnni_supported",
                "AVX512_BF16": "_is_avx512_bf16_supported", "AMX_TILE": "_is_amx_tile_supported",
                "AMX_FP16": "_is_amx_fp16_supported"}


def read_metadata(path) -> dict:
    """The compile-time metadata AOTInductor writes next to the model's library (AOTI_DEVICE_KEY, AOTI_CPU_ISA,
    AOTI_MACHINE, AOTI_COMPUTE_CAPABILITY): read from the zip, so nothing is loaded. Raises BundleError."""
    suffix = f"/data/aotinductor/{MODEL_NAME}/"
    try:
        with zipfile.ZipFile(path) as package:
            names = sorted(n for n in package.namelist() if suffix in n and n.endswith("_metadata.json"))
            if not names:
                raise BundleError(f"{path}: not an AOTInductor package (no {MODEL_NAME} metadata); re-export the model")
            return json.loads(package.read(names[0]))
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as e:
        raise BundleError(f"{path}: not a readable AOTInductor package ({e}); re-export the model") from None


def refusal(metadata: dict, device: str, machine: str, cpu_has=None, cuda_capability=None) -> str | None:
    """Why this worker cannot run a package with `metadata` on `device`, in one line, or None when it can.
    `cpu_has(word)` and `cuda_capability(index)` probe this host (defaults: torch's)."""
    name = RUNTIMES["aotinductor"].model_file
    built_for = metadata.get("AOTI_DEVICE_KEY", "cpu")
    kind = device.partition(":")[0]
    if built_for != kind:
        return f"{name} was compiled for {built_for}; this worker runs on {kind}: {EXPORT_HINT.format(device=kind)}"
    if metadata.get("AOTI_MACHINE", machine) != machine:
        return (f"{name} was compiled for {metadata['AOTI_MACHINE']} machines; this one is {machine}: "
                f"{EXPORT_HINT.format(device=kind)}")
    if kind == "cpu":
        cpu_has = cpu_has or _cpu_has
        words = metadata.get("AOTI_CPU_ISA", "").split()
        missing = [w for w in words if w in CPU_FEATURES and not cpu_has(w)]
        if missing:
            return (f"{name} was compiled for a CPU with {' '.join(words)}; this CPU lacks {' '.join(missing)}: "
                    f"export it on a host of the serving CPU class")
        return None
    wanted = metadata.get("AOTI_COMPUTE_CAPABILITY", "")
    have = (cuda_capability or _cuda_capability)(_index(device))
    if wanted and have != wanted:
        return (f"{name} was compiled for CUDA compute capability {wanted}; this worker's GPU has {have}: "
                f"{EXPORT_HINT.format(device=kind)} on this GPU model")
    return None


def _cpu_has(word: str) -> bool:
    probe = getattr(torch.cpu, CPU_FEATURES[word], None)
    return True if probe is None else bool(probe())  # a torch without the probe: not checked


def _cuda_capability(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return str(10 * major + minor)  # as AOTInductor writes it


def _index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


class AotModel:
    """model(input_ids, attention_mask) -> float32 logits (or logits and features) on the package's device, like a
    TorchScript module. AOTInductor's runner takes contiguous int64 inputs on its device; they are made so here."""

    def __init__(self, runner, device: str, max_batch: int = MAX_BATCH):
        self.runner, self.device, self.max_batch = runner, torch.device(device), max_batch

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        ids = input_ids.to(self.device, torch.long).contiguous()
        mask = attention_mask.to(self.device, torch.long).contiguous()
        if len(ids) <= self.max_batch:
            return self._run(ids, mask)
        parts = [self._run(ids[i:i + self.max_batch], mask[i:i + self.max_batch])
                 for i in range(0, len(ids), self.max_batch)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))
        return torch.cat(parts)

    def _run(self, ids: torch.Tensor, mask: torch.Tensor):
        out = self.runner(ids, mask)
        return tuple(out) if isinstance(out, (tuple, list)) else out


def load(path, device: str, threads: int):
    """The runtime interface (handlers/runtimes.py). Raises BundleError for a package this worker cannot run."""
    del threads  # the package's kernels follow torch's intra-op pool, which the handler sizes (see export)
    why = refusal(read_metadata(path), device, platform.machine())
    if why:
        raise BundleError(why)
    index = _index(device) if device.startswith("cuda") else -1
    runner = aoti_load_package(str(Path(path)), device_index=index)
    logger.info("AOTInductor package on %s (torch %s)", device, torch.__version__)
    return AotModel(runner, device), device
