"""Handler options, read from the `handler:` section of the model's model-config.yaml.

The section is written by `tsclient.archive` (and validated there, so a typo fails the build, not the
registration). TorchServe itself reads one key of that section, `profile`, to time the handler stages.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

from handlers.bundle import BundleError

TOKENIZER_CONFIG = "tokenizer_config.json"
# Any one of these holds the vocabulary, depending on the tokenizer family.
VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


# Texts per forward pass for chunk_size "auto", by the bundle's variant on CPU (bench/serve_notes.md):
# fp32 and int8 are fastest in chunks of 4 (padding saved outweighs smaller matmuls, AVX2 EPYC and AMX
# Xeon alike); bf16 on AMX is as fast at 8 as at 16 and slower at 4. On a GPU the whole batch goes in
# one pass: on an H200, batches of 32 ran 1.6x (fp32) and 1.9x (bf16) faster in one pass than in
# chunks of 16, since each chunk costs kernel launches and a host sync (bench/results/gpu_chunks.json).
AUTO_CHUNK_SIZE = {"fp32": 4, "int8": 4, "bf16": 16}
GPU_CHUNK_SIZE = None


class HandlerConfigError(ValueError):
    """An option of the `handler:` section is unknown or out of range."""


def _check_int(name: str, value, minimum: int, optional: bool, also: str = "") -> None:
    if value is None and optional:
        return
    # bool is an int subclass; `threads: true` in YAML is a mistake, not 1 thread.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "") + (f" or {also}" if also else "")
        raise HandlerConfigError(f"handler option '{name}' must be {allowed}, got {value!r}")


@dataclass
class HandlerConfig:
    max_texts_per_request: int = 64
    default_top_k: Optional[int] = None  # None: every label, in descending score order
    threads: Optional[int] = None  # None: the host's cores shared evenly between the model's workers
    max_length: Optional[int] = None  # None: the bundle's max_length; may only be lowered
    max_text_chars: int = 100_000  # longer texts are cut before tokenizing: answered, not rejected or slow
    # Texts per forward pass: a larger batch is sorted by length and run in chunks, each padded only to its
    # own longest text (handlers/batching.py). None: the whole batch in one pass, padded to its longest;
    # "auto": by the model's variant and device (AUTO_CHUNK_SIZE).
    chunk_size: Union[int, str, None] = "auto"
    profile: bool = False  # TorchServe's own key (ts.handler_utils.timer): per-stage timing metrics

    def __post_init__(self):
        _check_int("max_texts_per_request", self.max_texts_per_request, 1, optional=False)
        _check_int("default_top_k", self.default_top_k, 1, optional=True)
        _check_int("threads", self.threads, 1, optional=True)
        _check_int("max_length", self.max_length, 2, optional=True)  # room for the special tokens
        _check_int("max_text_chars", self.max_text_chars, 1, optional=False)
        if self.chunk_size != "auto":
            _check_int("chunk_size", self.chunk_size, 1, optional=True, also='"auto"')
        if not isinstance(self.profile, bool):
            raise HandlerConfigError(f"handler option 'profile' must be true or false, got {self.profile!r}")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: Optional[dict]) -> "HandlerConfig":
        section = (model_yaml_config or {}).get("handler") or {}
        if not isinstance(section, dict):
            raise HandlerConfigError(f"model-config.yaml 'handler' must be a mapping, got {type(section).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise HandlerConfigError(f"unknown handler option(s) {unknown}; known: {sorted(known)}")
        return cls(**section)

    def thread_count(self, workers: int, cpu_count: Optional[int] = None) -> int:
        """Intra-op threads for one worker. Each TorchServe worker is its own process; letting every one
        of them use all cores oversubscribes the CPU and makes everything slower."""
        if self.threads is not None:
            return self.threads
        return max(1, (cpu_count or os.cpu_count() or 1) // max(1, workers))

    def resolve_chunk_size(self, variant: str, device: str) -> Optional[int]:
        if self.chunk_size != "auto":
            return self.chunk_size
        return AUTO_CHUNK_SIZE.get(variant, AUTO_CHUNK_SIZE["fp32"]) if device.startswith("cpu") else GPU_CHUNK_SIZE

    def resolve_max_length(self, bundle_max_length: int) -> int:
        if self.max_length is None:
            return bundle_max_length
        if self.max_length > bundle_max_length:
            # Position embeddings and training stop at the bundle's length; longer inputs would break or drift.
            raise HandlerConfigError(
                f"handler option max_length={self.max_length} exceeds the bundle's max_length={bundle_max_length}"
            )
        return self.max_length


def parse_chunk_size(text: str) -> Union[int, str, None]:
    """A command-line chunk size: a positive integer, "auto", or "none" (one pass). Raises ValueError."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0  # not a number: the same refusal as a number below 1
    if value < 1:
        raise ValueError(f"chunk size must be a positive integer, 'auto' or 'none', got {text!r}")
    return value


def workers_from_model_yaml(model_yaml_config: Optional[dict]) -> int:
    """The most workers this model is configured to run at once (scaling via the API is not visible here)."""
    cfg = model_yaml_config or {}
    return int(cfg.get("maxWorkers") or cfg.get("minWorkers") or 1)


# Dynamically quantized Linear layers (export --quantize int8) have CPU kernels only.
CPU_ONLY_VARIANTS = ("int8",)


def choose_device(cuda_available: bool, gpu_id, variant: str = "fp32") -> str:
    """TorchServe passes gpu_id=None to CPU workers, and a GPU index when it assigned one."""
    if variant in CPU_ONLY_VARIANTS:
        return "cpu"
    return f"cuda:{gpu_id}" if cuda_available and gpu_id is not None else "cpu"


def cpu_only_warning(variant: str, gpu_id, cuda_available: bool) -> Optional[str]:
    """Said when TorchServe gave a worker a GPU that its model cannot use, so nobody wonders why it is idle."""
    if variant in CPU_ONLY_VARIANTS and cuda_available and gpu_id is not None:
        return (f"{variant} models run on the CPU only; this worker was assigned GPU {gpu_id} and leaves it idle "
                f"(set deviceType: cpu in model-config.yaml, or export fp32/bf16 for GPUs)")
    return None


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN takes a
    reference path: the bf16 MiniLM export ran 8-14x slower than fp32 on an AVX2-only AMD EPYC."""
    import torch

    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def slow_bf16_warning(variant: str, device: str, has_bf16: bool) -> Optional[str]:
    """What to tell an operator who serves a bf16 bundle on a CPU without bf16 instructions, else None."""
    if variant != "bf16" or not device.startswith("cpu") or has_bf16:
        return None
    return ("bf16 model on a CPU without bf16 instructions (no AVX512-BF16 or AMX): expect it to run 10x or more "
            "slower than the fp32 export; serve an fp32 archive on this host")


def require_tokenizer_files(model_dir: Path) -> None:
    """Fail with a clear message instead of letting AutoTokenizer guess or reach for the network."""
    model_dir = Path(model_dir)
    if not (model_dir / TOKENIZER_CONFIG).is_file():
        raise BundleError(f"{model_dir / TOKENIZER_CONFIG}: missing; the bundle has no saved tokenizer")
    if not any((model_dir / name).is_file() for name in VOCAB_FILES):
        raise BundleError(f"{model_dir}: no tokenizer vocabulary (expected one of {', '.join(VOCAB_FILES)})")
