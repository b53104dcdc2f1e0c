"""How each format is built: a variant of the eager model (fp32, int8, bf16) made into the file the handler's
runtime loads. A format yields candidates in order of preference; export checks each (training/export_checks.py)
and keeps the first without faults.

    torchscript  model.pt: a frozen trace of the eager variant (int8: torch.ao dynamic quantisation; bf16 weights)
    onnx         model.onnx with fused attention, run by ONNX Runtime (int8: dynamic, then static; see
                 training/onnx_build.py)
    pt2          model.pt2: torch.export of the eager variant (fp32, bf16) with dynamic batch and length, compiled
                 ahead of time by AOTInductor for one device (see Pt2Format)
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._inductor import aoti_compile_and_package, cpp_builder
from torch._inductor import config as inductor_config
from torch._inductor.exc import InvalidCxxCompiler
from torch.export import Dim

from handlers import aot_inductor
from handlers.onnx_runtime import CPU, OnnxModel
from handlers.tokenization import encode
from handlers.torchscript import follow_input_device
from training import onnx_build
from training.export_checks import ExportError
from training.features import LogitsAndFeatures, head_name
from training.rundir import CALIBRATION_FILE

log = logging.getLogger(__name__)


OUTPUTS = ("logits", "features")  # what every exported model returns (training/features.py)


class LogitsOnly(torch.nn.Module):
    """A plain (input_ids, attention_mask) -> float32 logits function: what bundles exported before out-of-scope
    detection hold, and what training.tiny's default bundles and bench/gpu_chunks.py still trace."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


# Library warnings our export cannot avoid, silenced by exact message and category around the one call
# that raises them, so every other warning (ours included) still shows.
#  - torch.jit builds a module's type by reading every attribute in dir() of each submodule; on a
#    transformers model that reads the deprecated `is_gradient_checkpointing` property and the lazy
#    `loss_function` of the base model (which has no loss and logs a default it will never use).
#  - dynamic int8 is torch.ao's quantize_dynamic, deprecated in favour of torchao, which produces no
#    TorchScript: the serving handler runs quantized::linear_dynamic ops only this API emits, and it
#    creates its int8 weights with the (equally deprecated) quantized tensor functions.
TRACE_WARNINGS = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated"),)
TRACE_LOG_LINES = (("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),)
#  - AOTInductor's packaging (torch 2.13) still calls a pytree API that torch itself deprecated.
COMPILE_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
QUANTIZE_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation "
                  r"functions .* are deprecated"),
)


class _DropLogLine(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def known_library_noise(warning_filters=(), log_lines=()):
    """Ignore exactly these (category, message regex) warnings and (logger, message prefix) log lines."""
    drops = [(logging.getLogger(name), _DropLogLine(prefix)) for name, prefix in log_lines]
    with warnings.catch_warnings():
        for category, message in warning_filters:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, drop in drops:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in drops:
                logger.removeFilter(drop)


def make_variant(model, variant: str) -> torch.nn.Module:
    head = head_name(model, model.config.num_labels)  # on fp32: an int8 head is no torch.nn.Linear
    model = copy.deepcopy(model)
    if variant == "int8":
        with known_library_noise(QUANTIZE_WARNINGS):
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif variant == "bf16":
        model = model.to(torch.bfloat16)
    return LogitsAndFeatures(model, head).eval()


def trace(module: torch.nn.Module, example: dict) -> torch.jit.ScriptModule:
    # TracerWarnings flag Python branches on tensor values; the parity grid is what proves the trace.
    with torch.inference_mode(False), torch.no_grad(), known_library_noise(TRACE_WARNINGS, TRACE_LOG_LINES):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (example["input_ids"], example["attention_mask"]), check_trace=False)
        return follow_input_device(torch.jit.freeze(traced.eval()))


def calibration_batch(tokenizer, texts: list[str] | None, max_length: int, model_config) -> dict | None:
    """Static quantisation's input: the run's calibration texts (training texts; None for a run trained before
    they were saved), padded to their longest and cut to the tokens onnx_build's memory budget allows for this
    encoder, as one numpy batch (onnxruntime's percentile calibrator needs a single shape for all it sees)."""
    if not texts:
        return None
    enc = encode(tokenizer, texts, max_length)
    budget = onnx_build.calibration_tokens(model_config.num_hidden_layers, model_config.hidden_size)
    keep = max(1, min(len(texts), budget // enc["input_ids"].shape[1]))
    return {name: t[:keep].numpy() for name, t in enc.items()}


@dataclass
class Built:
    """One exported variant: `module` runs it as serving will; `reference` is the eager model it must match
    (None where there is none, as for onnxruntime's int8); `path` is the model file to put in the bundle."""

    module: object
    path: Path
    reference: object = None
    info: dict | None = None


class TorchScriptFormat:
    """model.pt: a frozen trace of the eager variant (int8 via torch.ao dynamic quantisation, bf16 weights)."""

    runtime = "torchscript"

    def candidates(self, model, variant: str, example: dict, scratch: Path, calibration: dict | None,
                   require_fusion: bool, device: str = "cpu", max_length: int | None = None) -> Iterator[Built]:
        del device, max_length  # pt2's: a trace runs wherever it is loaded, at any length
        eager = make_variant(model, variant)
        traced = trace(eager, example)
        path = scratch / f"{variant}.pt"
        torch.jit.save(traced, str(path))
        yield Built(traced, path, reference=eager)


class OnnxFormat:
    """model.onnx, run by the handler's ONNX Runtime session (see training/onnx_build.py for the choices)."""

    runtime = "onnxruntime"

    def candidates(self, model, variant: str, example: dict, scratch: Path, calibration: dict | None,
                   require_fusion: bool, device: str = "cpu", max_length: int | None = None) -> Iterator[Built]:
        del device, max_length  # pt2's: the graph's axes are dynamic, and export checks it on the CPU
        fused = scratch / "fp32.onnx"
        if not fused.exists():  # int8 is quantised from the fused fp32 graph, built first
            eager = make_variant(model, "fp32")
            onnx_build.export(eager, example, scratch / "exported.onnx", OUTPUTS)
            counts = onnx_build.fuse(scratch / "exported.onnx", fused)
            log.info("onnx: fused %s", ", ".join(f"{op} {n}" for op, n in counts.items()))
            if require_fusion:
                try:
                    onnx_build.check_fusion(counts, model.config.num_hidden_layers, model.config.model_type)
                except onnx_build.FusionError as e:
                    raise ExportError(f"{e}; pass --no-require-fusion to export it anyway") from None
        threads, fused_ops = torch.get_num_threads(), onnx_build.op_counts(fused)
        if variant == "fp32":
            yield Built(OnnxModel(fused, threads, [CPU]), fused, reference=make_variant(model, "fp32"),
                        info={"fused_ops": fused_ops})
            return
        # int8 has no eager twin. Dynamic first; main asks for the next candidate (static, calibrated) only if
        # dynamic falls short, so static is built only then.
        dynamic = scratch / f"{variant}-dynamic.onnx"
        onnx_build.quantize_dynamic_int8(fused, dynamic)
        yield Built(OnnxModel(dynamic, threads, [CPU]), dynamic,
                    info={"quantization": onnx_build.QUANTIZATION["dynamic"], "fused_ops": fused_ops})
        if calibration is None:
            log.warning("onnx int8: no static fallback: this run has no calibration texts (%s; runs trained "
                        "since it was added have them)", CALIBRATION_FILE)
            return
        static = scratch / f"{variant}-static.onnx"
        onnx_build.quantize_static_int8(fused, static, calibration)
        yield Built(OnnxModel(static, threads, [CPU]), static,
                    info={"quantization": onnx_build.QUANTIZATION["static"], "fused_ops": fused_ops})


# AOTInductor's options, chosen by measurement (bench/serve_notes.md, "pt2 / AOTInductor options"): freezing folds
# the weights into the graph as constants, which lets Inductor pre-pack them for oneDNN's matmuls (batch 1 ran
# twice as fast as without); dynamic_threads makes the generated kernels use the worker's thread count at run time
# (the handler sizes it: cores / workers) instead of the exporting process's, at no measured cost. max_autotune
# compiled several times longer for no gain at batch 32.
INDUCTOR_CONFIGS = {"freezing": True, "cpp.dynamic_threads": True}


def require_cxx() -> None:
    """AOTInductor compiles the package with a C++ compiler, found as torch finds it (config.cpp.cxx: $CXX, else
    g++). Checked before any export work, so its absence is one line instead of a compiler traceback."""
    try:
        cpp_builder.get_cpp_compiler()
    except InvalidCxxCompiler:
        tried = ", ".join(c for c in inductor_config.cpp.cxx if c)
        raise ExportError(f"--format pt2: AOTInductor needs a C++ compiler to export (not to serve) and found none "
                          f"(tried {tried}): install one (apt-get install g++) or set CXX to its path") from None


class OnDevice:
    """A model on another device, called as export's checks call every model: CPU inputs in, CPU outputs out."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device

    def __call__(self, input_ids, attention_mask):
        out = self.model(input_ids.to(self.device), attention_mask.to(self.device))
        return tuple(t.cpu() for t in out) if isinstance(out, (tuple, list)) else out.cpu()


def on_device(model, device: str):
    return model if device == "cpu" else OnDevice(model, device)


def compile_package(module: torch.nn.Module, example: dict, path: Path, max_length: int, device: str) -> dict:
    """torch.export `module` (on `device`) with a dynamic batch (1 to aot_inductor.MAX_BATCH) and length (1 to
    max_length), and compile it with AOTInductor into the package `path`. Returns what the card records."""
    batch, length = Dim("batch", min=1, max=aot_inductor.MAX_BATCH), Dim("length", min=1, max=max_length)
    inputs = (example["input_ids"].to(device), example["attention_mask"].to(device))
    started = time.perf_counter()
    with torch.no_grad(), known_library_noise(TRACE_WARNINGS, TRACE_LOG_LINES):
        # strict=False traces the Python of the model as it runs (transformers' mask code is not TorchDynamo-clean).
        program = torch.export.export(module, inputs, dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
                                      strict=False)
    exported = time.perf_counter()
    with known_library_noise(COMPILE_WARNINGS):
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=dict(INDUCTOR_CONFIGS))
    return {"inductor_configs": dict(INDUCTOR_CONFIGS), "device": device,
            "dynamic_shapes": {"batch": [1, aot_inductor.MAX_BATCH], "length": [1, max_length]},
            "export_seconds": round(exported - started, 1), "compile_seconds": round(time.perf_counter() - exported, 1),
            "package_bytes": path.stat().st_size}


class Pt2Format:
    """model.pt2: the eager variant (fp32 or bf16) through torch.export and AOTInductor, compiled for one device and
    checked there as the handler loads it (handlers/aot_inductor.py)."""

    runtime = "aotinductor"

    def candidates(self, model, variant: str, example: dict, scratch: Path, calibration: dict | None,
                   require_fusion: bool, device: str = "cpu", max_length: int | None = None) -> Iterator[Built]:
        del calibration, require_fusion  # int8 is refused for pt2 (training.export), and nothing is fused
        eager = make_variant(model, variant).to(device)
        path = scratch / f"{variant}.pt2"
        info = compile_package(eager, example, path, max_length or model.config.max_position_embeddings, device)
        log.info("pt2 %s: exported in %.1f s, compiled for %s in %.1f s (%.1f MB)", variant, info["export_seconds"],
                 device, info["compile_seconds"], info["package_bytes"] / 1e6)
        module, _ = aot_inductor.load(path, device, torch.get_num_threads())
        yield Built(on_device(module, device), path, reference=on_device(eager, device), info={"aotinductor": info})


FORMATS = {"torchscript": TorchScriptFormat(), "onnx": OnnxFormat(), "pt2": Pt2Format()}
# The packages whose versions a bundle of each format records in its card (pt2: torch, recorded for every format).
RUNTIME_PACKAGES = {"torchscript": (), "onnx": ("onnx", "onnxscript", "onnxruntime"), "pt2": ()}


