"""Export a trained run to a self-contained bundle (TorchScript or ONNX), verified against the eager model.

    python -m training.export --run-dir runs/demo --output-dir runs/demo/export [--format torchscript|onnx]
                              [--quantize int8 | --dtype bf16]

The exported model maps (input_ids, attention_mask) -> float32 logits. Before anything is written, its
outputs are compared with the eager model on real texts over a grid of batch sizes and lengths (none equal
to the trace input), a few texts are run alone and inside a batch of 32 to show their answers do not depend
on their neighbours, and every variant is evaluated on the test split next to fp32. The bundle is written to
a temporary folder and renamed into place, so a failed export leaves nothing.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import logging
import shutil
import tempfile
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd
import torch

from handlers import bundle
from handlers.bundle import MULTI, SINGLE
from handlers.device import cpu_has_bf16, slow_bf16_warning
from handlers.onnx_runtime import CPU, OnnxModel
from handlers.profile import PROFILE_FILE, profile_of
from handlers.tokenization import encode
from handlers.torchscript import follow_input_device
from cli import UserError, check_choices, option, run
from training import onnx_build
from training.data import at_most
from training.problems import problem_for
from training.report import predict_probs
from training.rundir import CALIBRATION_FILE, RunDir

log = logging.getLogger("training.export")
PARITY_BATCHES = (1, 3, 8, 17, 32)
TRACE_SHAPE = (2, 9)  # batch, length of the example the trace sees; the parity grid avoids it
# Traced vs eager of the same variant: fp32 must agree to 1e-4 (the contract); int8 and bf16 run
# different fused kernels once frozen, so their bound is looser; accuracy is checked separately.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "int8": 1e-3, "bf16": 5e-2}
NEIGHBOUR_TEXTS, NEIGHBOUR_BATCH = 8, 32  # texts run alone and inside a batch of this size


class ExportError(UserError):
    """Export refused: parity or accuracy check failed (an unusable run directory raises RunDirError)."""


@dataclass
class ExportConfig:
    """Export a trained run to a verified TorchScript or ONNX bundle."""

    run_dir: str = option("run directory written by training.train")
    output_dir: str = option("bundle directory to create")
    format: Literal["torchscript", "onnx"] = option(
        "torchscript (model.pt) or onnx (model.onnx with fused attention, served by ONNX Runtime)", "torchscript")
    require_fusion: bool = option(
        "onnx: refuse a graph whose attention was not fused into onnxruntime's Attention op", True)
    quantize: Literal["none", "int8"] = option(
        "int8: dynamic quantisation of Linear layers (VNNI); onnx falls back to static quantisation calibrated on "
        "training texts when dynamic loses more than --max-accuracy-drop or moves answers with batch neighbours",
        "none")
    dtype: Literal["fp32", "bf16"] = option("bf16: bfloat16 weights (AMX)", "fp32")
    max_accuracy_drop: float = option(
        "refuse a variant whose test accuracy (multi-label: micro-F1) is more than this many points below fp32", 1.0)
    parity_tolerance: float | None = option(
        "max |logit difference| traced vs eager (default: 1e-4 fp32, 1e-3 int8, 5e-2 bf16)", None)
    max_eval_samples: int | None = option("evaluate on at most this many test texts", None)
    force: bool = option("replace an existing output directory", False)

    def __post_init__(self):
        check_choices(self)
        if self.quantize == "int8" and self.dtype == "bf16":
            raise UserError("choose one of --quantize int8 or --dtype bf16, not both")
        if self.format == "onnx" and self.dtype == "bf16":
            raise UserError("--dtype bf16 is a TorchScript variant; with --format onnx use fp32 or --quantize int8")
        if self.max_accuracy_drop < 0:
            raise UserError(f"--max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")
        if self.parity_tolerance is not None and self.parity_tolerance <= 0:
            raise UserError(f"--parity-tolerance must be positive, got {self.parity_tolerance}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise UserError(f"--max-eval-samples must be at least 1, got {self.max_eval_samples}")

    @property
    def variant(self) -> str:
        return "int8" if self.quantize == "int8" else self.dtype

    @property
    def tolerance(self) -> float:
        return self.parity_tolerance or DEFAULT_TOLERANCE[self.variant]


class LogitsOnly(torch.nn.Module):
    """What gets traced: a plain (input_ids, attention_mask) -> float32 logits function."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def load_run(run_dir: Path):
    """Eager fp32 model, tokenizer, labels, run metadata and the test split of a finished run directory.
    Raises RunDirError (a UserError) naming a missing or inconsistent file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rd = RunDir(run_dir)
    rd.check_finished()
    labels = rd.read_labels()
    model = AutoModelForSequenceClassification.from_pretrained(rd.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(rd.model_dir)
    return model, tokenizer, labels, rd.read_run(), rd.read_test()


def run_problem(run_dir: Path, labels: list[str]):
    """The run's problem type with what was fitted on validation (thresholds, temperature), read where serving
    reads them: the model's config.json, with the bundle's own checks (a run before either: single, T=1)."""
    where = RunDir(run_dir).model_config_file
    config = bundle.read_json(where)
    problem_type, thresholds = bundle.read_problem(config, len(labels), where)
    return problem_for(problem_type == MULTI, len(labels), list(thresholds), bundle.read_temperature(config, where))


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
    model = copy.deepcopy(model)
    if variant == "int8":
        with known_library_noise(QUANTIZE_WARNINGS):
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif variant == "bf16":
        model = model.to(torch.bfloat16)
    return LogitsOnly(model).eval()


def trace(module: torch.nn.Module, example: dict) -> torch.jit.ScriptModule:
    # TracerWarnings flag Python branches on tensor values; the parity grid is what proves the trace.
    with torch.inference_mode(False), torch.no_grad(), known_library_noise(TRACE_WARNINGS, TRACE_LOG_LINES):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (example["input_ids"], example["attention_mask"]), check_trace=False)
        return follow_input_device(torch.jit.freeze(traced.eval()))


def trace_example(tokenizer, texts: list[str], max_length: int) -> dict:
    """The trace input: TRACE_SHAPE with real padding in it, so mask handling is part of the graph."""
    batch, length = TRACE_SHAPE
    pad = tokenizer.pad_token_id or 0
    enc = encode(tokenizer, texts[:batch], max_length)
    ids, mask = _fit(enc["input_ids"], length, pad), _fit(enc["attention_mask"], length, 0)
    mask[:, 0] = 1
    ids[-1, length // 2:], mask[-1, length // 2:] = pad, 0  # the last row is padded
    return {"input_ids": ids, "attention_mask": mask}


def parity_cases(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Real texts cut to lengths 1..max_length for several batch sizes, with ragged rows (padding)."""
    lengths = sorted({1, 2, 7, 31, min(64, max_length), max_length})
    cases = []
    for batch in PARITY_BATCHES:
        chosen = [texts[i % len(texts)] for i in range(batch)]
        enc = encode(tokenizer, chosen, max_length)
        for length in lengths:
            if (batch, length) == TRACE_SHAPE:
                continue
            ids = _fit(enc["input_ids"], length, tokenizer.pad_token_id or 0)
            mask = _fit(enc["attention_mask"], length, 0)
            mask[:, 0] = 1  # every row keeps at least its first token
            cases.append({"input_ids": ids, "attention_mask": mask})
    return cases


def _fit(t: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    out = torch.full((t.shape[0], length), fill, dtype=t.dtype)
    n = min(length, t.shape[1])
    out[:, :n] = t[:, :n]
    return out


def check_parity(reference, traced, cases: list[dict], tolerance: float) -> dict:
    """Max |Δlogit| over all cases; argmax must agree wherever the reference's top-2 margin exceeds
    the tolerance (a tie within numerical noise is not a disagreement). Raises ExportError."""
    worst = {"max_abs_diff": 0.0, "shape": None}
    with torch.inference_mode():
        for case in cases:
            ref = reference(case["input_ids"], case["attention_mask"]).float()
            got = traced(case["input_ids"], case["attention_mask"]).float()
            diff = (ref - got).abs().max().item()
            shape = tuple(case["input_ids"].shape)
            if worst["shape"] is None or not np.isfinite(diff) or diff > worst["max_abs_diff"]:
                worst = {"max_abs_diff": diff, "shape": shape}
            top2 = ref.topk(2, dim=-1).values if ref.shape[-1] > 1 else ref
            decisive = (top2[:, 0] - top2[:, -1]) > tolerance
            flipped = (ref.argmax(-1) != got.argmax(-1)) & decisive
            if flipped.any():
                raise ExportError(f"parity check failed: predicted label differs at batch {shape[0]} x length "
                                  f"{shape[1]} (|Δlogit| {diff:.2e})")
    if not np.isfinite(worst["max_abs_diff"]) or worst["max_abs_diff"] > tolerance:
        b, t = worst["shape"]
        raise ExportError(f"parity check failed: max |Δlogit| {worst['max_abs_diff']:.2e} > {tolerance:.0e} "
                          f"at batch {b} x length {t}")
    return {"max_abs_diff": worst["max_abs_diff"], "tolerance": tolerance, "cases": len(cases),
            "worst_shape": list(worst["shape"])}


def evaluate(module, tokenizer, test: pd.DataFrame, labels: list[str], max_length: int, problem,
             batch_size: int = 64) -> tuple[dict, np.ndarray]:
    """The problem's headline metrics (accuracy and macro-F1, or the multi-label F1s) and the throughput of a
    traced module on the test split, and its probabilities [texts, labels] (the bundle's reference profile)."""
    texts = test["text"].tolist()
    started = time.perf_counter()
    probs = predict_probs(module, tokenizer, texts, max_length, batch_size, activation=problem.probabilities)
    seconds = time.perf_counter() - started
    metrics = problem.headline(problem.targets(test, labels), probs)
    metrics["texts_per_second"] = round(len(texts) / seconds, 1)
    return metrics, probs


def check_neighbours(module, tokenizer, texts: list[str], max_length: int, tolerance: float, refuse: bool) -> dict:
    """The same texts alone and inside a batch of NEIGHBOUR_BATCH. fp32 must give each the same label either way
    (a difference is a masking or padding bug: refused when `refuse`); int8 quantises activations per batch, so
    its answers can move with their neighbours: measured, reported in the card and logged, not refused."""
    chosen = [texts[i % len(texts)] for i in range(NEIGHBOUR_BATCH)]
    batch = encode(tokenizer, chosen, max_length)
    worst, changed = 0.0, 0
    with torch.inference_mode():
        together = module(batch["input_ids"], batch["attention_mask"]).float()
        for i, text in enumerate(chosen[:NEIGHBOUR_TEXTS]):
            one = encode(tokenizer, [text], max_length)
            alone = module(one["input_ids"], one["attention_mask"]).float()[0]
            worst = max(worst, (alone - together[i]).abs().max().item())
            top2 = alone.topk(min(2, alone.shape[-1])).values
            changed += int(alone.argmax() != together[i].argmax() and top2[0] - top2[-1] > tolerance)
    if changed and refuse:
        raise ExportError(f"{changed} of {NEIGHBOUR_TEXTS} texts get a different label alone than inside a batch of "
                          f"{NEIGHBOUR_BATCH} (|Δlogit| up to {worst:.2e}): answers depend on their batch neighbours")
    if changed:
        log.warning("%d of %d texts get a different label alone than inside a batch of %d (|Δlogit| up to %.2e): "
                    "this variant's answers depend on their batch neighbours", changed, NEIGHBOUR_TEXTS,
                    NEIGHBOUR_BATCH, worst)
    return {"max_abs_diff": worst, "labels_changed": changed, "texts": min(NEIGHBOUR_TEXTS, len(chosen)),
            "batch": NEIGHBOUR_BATCH}


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


def points_lost(result: dict, fp32: dict | None, gate: str) -> float:
    """Points of the gate metric a variant loses against fp32 (0 for fp32 itself)."""
    return 0.0 if fp32 is None else 100 * (fp32["test"][gate] - result["test"][gate])


def shortcomings(result: dict, fp32: dict, gate: str, config: ExportConfig) -> list[str]:
    """Why a variant should give way to the next candidate, if its format has one: accuracy lost past the gate,
    or answers that move with their batch neighbours (a served text's answer would then depend on the traffic
    it happens to be batched with, even where no label flipped among the texts checked)."""
    faults, lost, n = [], points_lost(result, fp32, gate), result["neighbours"]
    if lost > config.max_accuracy_drop:
        faults.append(f"loses {lost:.2f} {gate} points (limit {config.max_accuracy_drop})")
    if n["max_abs_diff"] > config.tolerance:
        faults.append(f"answers move with their batch neighbours (|Δlogit| up to {n['max_abs_diff']:.2e} > "
                      f"{config.tolerance:.0e}; {n['labels_changed']} of {n['texts']} labels changed)")
    return faults


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

    def candidates(self, model, variant: str, example: dict, scratch: Path, config: ExportConfig,
                   calibration: dict | None) -> Iterator[Built]:
        eager = make_variant(model, variant)
        traced = trace(eager, example)
        path = scratch / f"{variant}.pt"
        torch.jit.save(traced, str(path))
        yield Built(traced, path, reference=eager)


class OnnxFormat:
    """model.onnx, run by the handler's ONNX Runtime session (see training/onnx_build.py for the choices)."""

    runtime = "onnxruntime"

    def candidates(self, model, variant: str, example: dict, scratch: Path, config: ExportConfig,
                   calibration: dict | None) -> Iterator[Built]:
        fused = scratch / "fp32.onnx"
        if not fused.exists():  # int8 is quantised from the fused fp32 graph, built first
            eager = make_variant(model, "fp32")
            onnx_build.export(eager, example, scratch / "exported.onnx")
            counts = onnx_build.fuse(scratch / "exported.onnx", fused)
            log.info("onnx: fused %s", ", ".join(f"{op} {n}" for op, n in counts.items()))
            if config.require_fusion:
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

FORMATS = {"torchscript": TorchScriptFormat(), "onnx": OnnxFormat()}
RUNTIME_PACKAGES = {"torchscript": (), "onnx": ("onnx", "onnxscript", "onnxruntime")}


def build_card(config: ExportConfig, run: dict, run_dir: Path, results: dict) -> dict:
    import importlib.metadata as md

    train_metrics = RunDir(run_dir).read_metrics()
    return {
        "base_model": run["base_model"], "max_length": run["max_length"], "variant": config.variant,
        "runtime": FORMATS[config.format].runtime,
        "quantize": config.quantize, "dtype": config.dtype, "inputs": ["input_ids", "attention_mask"],
        "problem_type": run.get("problem_type", SINGLE), "data": run["data"],
        "training": {"test": {k: v for k, v in train_metrics.get("test", {}).items() if isinstance(v, (int, float))},
                     "train": train_metrics.get("train")},
        "export": results, "versions": {p: md.version(p) for p in ("torch", "transformers", "tokenizers", *RUNTIME_PACKAGES[config.format])},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_bundle(out: Path, model_file: Path, tokenizer, model_config, labels: list[str], card: dict,
                 force: bool, profile: dict | None = None) -> None:
    """Write into a sibling temp dir, then rename: readers never see half a bundle. `model_file` is copied in
    under the name the card's runtime reads; `profile` is the reference profile drift checks compare with."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copyfile(model_file, tmp / bundle.model_file(card))
        if profile is not None:
            (tmp / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
        model_config.save_pretrained(tmp)
        bundle.write_metadata(tmp, labels, card)
        bundle.check(tmp)  # read back what serving will read: the same checks as the archiver and the handler
        if out.exists() and force:
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(config: ExportConfig) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_dir, out = Path(config.run_dir), Path(config.output_dir)
    if out.exists() and not config.force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    warning = slow_bf16_warning(config.variant, "cpu", cpu_has_bf16())
    if warning:  # the export is still right for a serving host that has them, only its checks run slowly here
        log.warning("%s (this export's checks will be slow too)", warning)
    model, tokenizer, labels, run, test = load_run(run_dir)
    problem = run_problem(run_dir, labels)
    if config.max_eval_samples:
        test = at_most(test, config.max_eval_samples, seed=0)
    max_length, texts = run["max_length"], test["text"].tolist()
    example = trace_example(tokenizer, texts, max_length)
    cases = parity_cases(tokenizer, texts, max_length)

    fmt, results, gate = FORMATS[config.format], {}, problem.gate_metric  # accuracy, or micro-F1 for multi-label
    calibration = (calibration_batch(tokenizer, RunDir(run_dir).read_calibration(), max_length, model.config)
                   if config.quantize == "int8" else None)

    def measure(b: Built, tolerance: float, refuse: bool) -> tuple[dict, np.ndarray]:
        if b.reference is not None:
            parity = check_parity(b.reference, b.module, cases, tolerance)
        else:  # no eager twin (onnxruntime's int8): the distance to fp32 is measured, the accuracy gate decides
            parity = dict(check_parity(built["fp32"].module, b.module, cases, math.inf), tolerance=None,
                          against="fp32")
        metrics, probs = evaluate(b.module, tokenizer, test, labels, max_length, problem)
        return {"parity": parity, **(b.info or {}),
                "neighbours": check_neighbours(b.module, tokenizer, texts, max_length, tolerance, refuse=refuse),
                "test": metrics}, probs

    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        built, probs = {}, {}
        for variant in dict.fromkeys(("fp32", config.variant)):  # fp32 first: the accuracy the variant must keep
            tolerance = config.tolerance if variant == config.variant else DEFAULT_TOLERANCE["fp32"]
            # Usually one candidate; onnx int8 has a second (static) tried only when the first falls short.
            tried = []
            for b in fmt.candidates(model, variant, example, Path(scratch), config, calibration):
                result, p = measure(b, tolerance, refuse=variant == "fp32")
                faults = [] if variant == "fp32" else shortcomings(result, results["fp32"], gate, config)
                tried.append((b, result, p, faults))
                if not faults:
                    break
                log.info("%s %s, %s: %s", fmt.runtime, variant, result.get("quantization", "as built"), "; ".join(faults))
            # The first without faults; failing that, the one that loses least (the gate below decides).
            b, result, p, _ = min(tried, key=lambda t: (bool(t[3]), points_lost(t[1], results.get("fp32"), gate)))
            if len(tried) > 1:
                result["tried"] = [{"quantization": r["quantization"], "kept": r is result, "faults": f,
                                    f"{gate}_drop_points": round(points_lost(r, results["fp32"], gate), 3)}
                                   for _, r, _, f in tried]
            built[variant], results[variant], probs[variant] = b, result, p
        for name, r in results.items():
            log.info("%s %s: parity max |Δlogit| %.2e over %d shapes; alone vs in a batch %.2e; test %s (%.0f texts/s)",
                     fmt.runtime, name, r["parity"]["max_abs_diff"], r["parity"]["cases"],
                     r["neighbours"]["max_abs_diff"], problem.describe(r["test"]), r["test"]["texts_per_second"])
        drop = points_lost(results[config.variant], results["fp32"], gate)
        results[f"{gate}_drop_points"] = round(drop, 3)
        if drop > config.max_accuracy_drop:
            raise ExportError(f"{config.variant} loses {drop:.2f} {gate} points against fp32 "
                              f"(limit --max-accuracy-drop {config.max_accuracy_drop}); not exported")
        # The reference for drift checks (tsclient.drift): the test split as the served variant answers it.
        profile = profile_of(probs[config.variant], labels, tokenizer, texts, max_length).to_json()
        write_bundle(out, built[config.variant].path, tokenizer, model.config, labels,
                     build_card(config, run, run_dir, results), config.force, profile)
    log.info("bundle written to %s (%s)", out, config.variant)
    return results


if __name__ == "__main__":
    sys.exit(run(main, ExportConfig))
