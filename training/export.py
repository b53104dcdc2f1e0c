"""Export a trained run to a self-contained bundle (TorchScript, ONNX or AOTInductor), verified against the eager
model.

    python -m training.export --run-dir runs/demo --output-dir runs/demo/export [--format torchscript|onnx|pt2]
                              [--quantize int8 | --dtype bf16] [--device cpu|cuda]

The exported model maps (input_ids, attention_mask) -> float32 logits. Before anything is written, its
outputs are compared with the eager model on real texts over a grid of batch sizes and lengths (none equal
to the trace input), a few texts are run alone and inside a batch of 32 to show their answers do not depend
on their neighbours, and every variant is evaluated on the test split next to fp32. The bundle is written to
a temporary folder and renamed into place, so a failed export leaves nothing.
"""
from __future__ import annotations

import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers import bundle, out_of_scope
from handlers.bundle import MULTI
from handlers.config import HandlerConfig
from handlers.device import cpu_has_bf16, slow_bf16_warning
from handlers.drift_bins import profile_of
from textclf.core.errors import UserError
from textclf.core.options import check_choices, option, run
from training.baselines import MAJORITY, TFIDF, shortfall
from training.bundle_writer import build_card, write_bundle
from training.export_checks import (
    DEFAULT_TOLERANCE,
    Candidate,
    ExportError,
    check_neighbours,
    check_parity,
    evaluate,
    parity_cases,
    points_lost,
    shortcomings,
    trace_example,
)
from training.export_formats import FORMATS, Built, calibration_batch, require_cxx
from training.out_of_scope import decided_oos
from training.problems import problem_for
from training.rundir import RunDir
from training.splits import at_most

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """Export a trained run to a verified TorchScript, ONNX or AOTInductor bundle."""

    run_dir: str = option("run directory written by training.train")
    output_dir: str = option("bundle directory to create")
    format: Literal["torchscript", "onnx", "pt2"] = option(
        "torchscript (model.pt), onnx (model.onnx with fused attention, served by ONNX Runtime) or pt2 (model.pt2: "
        "torch.export compiled ahead of time by AOTInductor for --device; needs a C++ compiler to export)",
        "torchscript")
    device: Literal["cpu", "cuda"] = option(
        "pt2: compile for and check on this device; the package serves only there", "cpu")
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
    allow_weak: bool = option(
        "export a model that does not beat the majority-class baseline on the test split (a warning instead of a "
        "refusal)", False)

    def __post_init__(self):
        check_choices(self)
        if self.quantize == "int8" and self.dtype == "bf16":
            raise UserError("choose one of --quantize int8 or --dtype bf16, not both")
        if self.format == "onnx" and self.dtype == "bf16":
            raise UserError("--dtype bf16 is a TorchScript variant; with --format onnx use fp32 or --quantize int8")
        if self.format == "pt2" and self.quantize == "int8":
            raise UserError("--quantize int8 is not offered with --format pt2; use --format torchscript or onnx for int8")
        if self.format != "pt2" and self.device != "cpu":
            raise UserError(f"--device {self.device} is for --format pt2 (a package is compiled for one device); "
                            f"{self.format} bundles are exported on the CPU and serve on either")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device here (torch.cuda.is_available() is False); export on the "
                            "GPU host that will serve the package")
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


def load_run(run_dir: Path):
    """Eager fp32 model, tokenizer, labels, run metadata and the test split of a finished run directory.
    Raises RunDirError (a UserError) naming a missing or inconsistent file."""

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


def check_baselines(run_dir: Path, gate: str, allow_weak: bool) -> None:
    """The floor: refuse a model that does not beat the majority class on its own test split (unless
    `allow_weak`), warn about one below TF-IDF + logistic regression. Runs trained before baselines were
    recorded pass unchecked, with a line saying so."""
    test = RunDir(run_dir).read_metrics().get("test", {})
    if "baselines" not in test:
        log.info("%s was trained before baselines were recorded: not checked against them", run_dir)
        return
    weak = shortfall(test, MAJORITY, gate)
    if weak and not allow_weak:
        raise ExportError(f"{weak}; not exported (pass --allow-weak to export it anyway)")
    for line in filter(None, (weak, shortfall(test, TFIDF, gate))):
        log.warning("%s", line)


def read_detector(run_dir: Path, run: dict):
    """The run's out-of-scope detector (training/out_of_scope.py), or None for a run trained without one."""
    section = run.get("out_of_scope")
    return out_of_scope.read(run_dir, section, RunDir(run_dir).run_file) if section else None


def main(config: ExportConfig) -> dict:
    run_dir, out = Path(config.run_dir), Path(config.output_dir)
    if out.exists() and not config.force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if config.format == "pt2":
        require_cxx()  # before any work: the compiler is needed only at the end, after minutes of it
    warning = slow_bf16_warning(config.variant, config.device, cpu_has_bf16())
    if warning:  # the export is still right for a serving host that has them, only its checks run slowly here
        log.warning("%s (this export's checks will be slow too)", warning)
    model, tokenizer, labels, run, test = load_run(run_dir)
    problem = run_problem(run_dir, labels)
    check_baselines(run_dir, problem.gate_metric, config.allow_weak)
    if config.max_eval_samples:
        test = at_most(test, config.max_eval_samples, seed=0)
    max_length, texts = run["max_length"], test["text"].tolist()
    example = trace_example(tokenizer, texts, max_length)
    cases = parity_cases(tokenizer, texts, max_length)

    fmt, results, gate = FORMATS[config.format], {}, problem.gate_metric  # accuracy, or micro-F1 for multi-label
    calibration = (calibration_batch(tokenizer, RunDir(run_dir).read_calibration(), max_length, model.config)
                   if config.quantize == "int8" else None)

    def measure(b: Built, tolerance: float, refuse: bool) -> tuple[dict, tuple]:
        if b.reference is not None:
            parity = check_parity(b.reference, b.module, cases, tolerance)
        else:  # no eager twin (onnxruntime's int8): the distance to fp32 is measured, the accuracy gate decides
            parity = dict(check_parity(built["fp32"].module, b.module, cases, math.inf), tolerance=None,
                          against="fp32")
        metrics, outputs = evaluate(b.module, tokenizer, test, labels, max_length, problem)
        return {"parity": parity, **(b.info or {}),
                "neighbours": check_neighbours(b.module, tokenizer, texts, max_length, tolerance, refuse=refuse),
                "test": metrics}, outputs

    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        built, outputs = {}, {}
        for variant in dict.fromkeys(("fp32", config.variant)):  # fp32 first: the accuracy the variant must keep
            tolerance = config.tolerance if variant == config.variant else DEFAULT_TOLERANCE["fp32"]
            # Usually one candidate; onnx int8 has a second (static) tried only when the first falls short.
            tried: list[Candidate] = []
            for b in fmt.candidates(model, variant, example, Path(scratch), calibration, config.require_fusion,
                                    device=config.device, max_length=max_length):
                result, p = measure(b, tolerance, refuse=variant == "fp32")
                faults = ([] if variant == "fp32" else
                          shortcomings(result, results["fp32"], gate, config.max_accuracy_drop, config.tolerance))
                tried.append(Candidate(b, result, p, faults))
                if not faults:
                    break
                log.info("%s %s, %s: %s", fmt.runtime, variant, result.get("quantization", "as built"), "; ".join(faults))
            # The first without faults; failing that, the one that loses least (the gate below decides).
            kept = min(tried, key=lambda c: (bool(c.faults), points_lost(c.result, results.get("fp32"), gate)))
            b, result, p = kept.built, kept.result, kept.outputs
            if len(tried) > 1:
                result["tried"] = [{"quantization": c.result["quantization"], "kept": c is kept, "faults": c.faults,
                                    f"{gate}_drop_points": round(points_lost(c.result, results["fp32"], gate), 3)}
                                   for c in tried]
            if "quantization" in result:  # which int8 recipe was kept, in the log as well as the card
                log.info("%s %s: kept %s", fmt.runtime, variant, result["quantization"])
            built[variant], results[variant], outputs[variant] = b, result, p
        for name, r in results.items():
            log.info("%s %s: parity max |Δlogit| %.2e over %d shapes; alone vs in a batch %.2e; test %s (%.0f texts/s)",
                     fmt.runtime, name, r["parity"]["max_abs_diff"], r["parity"]["cases"],
                     r["neighbours"]["max_abs_diff"], problem.describe(r["test"]), r["test"]["texts_per_second"])
        drop = points_lost(results[config.variant], results["fp32"], gate)
        results[f"{gate}_drop_points"] = round(drop, 3)
        if drop > config.max_accuracy_drop:
            raise ExportError(f"{config.variant} loses {drop:.2f} {gate} points against fp32 "
                              f"(limit --max-accuracy-drop {config.max_accuracy_drop}); not exported")
        card = build_card(run, run_dir, results, fmt=config.format, quantize=config.quantize, dtype=config.dtype,
                          variant=config.variant)
        if config.format == "pt2":  # the one device type the package runs on (handlers/aot_inductor.py checks it)
            card["device"] = config.device
        detector = read_detector(run_dir, run)
        probs, features = outputs[config.variant]
        flagged = None
        if detector is not None:
            # The served variant's features, on the scale the threshold was fitted on (the eager fp32 model's).
            flagged = ((detector.in_scope(probs, features) < detector.threshold)
                       | decided_oos(problem.decide(probs), detector.oos_class))
            card["out_of_scope"] = {**detector.section(), "test_share": round(float(flagged.mean()), 4)}
            log.info("out-of-scope detector %s: %.1f%% of the test split answered out of scope by %s %s",
                     detector.kind, 100 * flagged.mean(), fmt.runtime, config.variant)
        # The reference for drift checks (textclf.pipelines.drift): the test split as the served variant answers it.
        # Out-of-scope texts count under the handler's default label, as an archive answers them unless it names another.
        scope = None if flagged is None else (flagged.tolist(), HandlerConfig.out_of_scope_label)
        profile = profile_of(probs, labels, tokenizer, texts, max_length, out_of_scope=scope).to_json()
        write_bundle(out, built[config.variant].path, tokenizer, model.config, labels, card, config.force, profile,
                     detector=None if detector is None else RunDir(run_dir).out_of_scope_file)
    log.info("bundle written to %s (%s)", out, config.variant)
    return results


def command(argv=None, prog="python -m training.export") -> int:
    return run(main, ExportConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
