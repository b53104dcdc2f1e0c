"""The checks every exported variant passes before a bundle is written, whatever its format.

- parity: the exported module against its eager twin over a grid of batch sizes and lengths (none equal to the
  trace input), within a tolerance per variant, with the same argmax wherever the top-2 margin is decisive;
- neighbours: a few texts alone and inside a batch of 32 (a difference is a masking or padding bug);
- the gate: every variant is evaluated on the test split next to fp32 and may lose at most --max-accuracy-drop.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from handlers.batching import split_outputs
from handlers.tokenization import encode
from textclf.core.errors import UserError
from training.report import predict_outputs

log = logging.getLogger(__name__)
PARITY_BATCHES = (1, 3, 8, 17, 32)
TRACE_SHAPE = (2, 9)  # batch, length of the example the trace sees; the parity grid avoids it
# Traced vs eager of the same variant: fp32 must agree to 1e-4 (the contract); int8 and bf16 run
# different fused kernels once frozen, so their bound is looser; accuracy is checked separately.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "int8": 1e-3, "bf16": 5e-2}
NEIGHBOUR_TEXTS, NEIGHBOUR_BATCH = 8, 32  # texts run alone and inside a batch of this size


class ExportError(UserError):
    """Export refused: parity or accuracy check failed (an unusable run directory raises RunDirError)."""


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
    the tolerance (a tie within numerical noise is not a disagreement). The features out-of-scope detection
    reads (training/features.py) are held to the same tolerance. Raises ExportError."""
    worst = {"max_abs_diff": 0.0, "shape": None}
    features_diff = None  # None: the models return logits alone
    with torch.inference_mode():
        for case in cases:
            ref, ref_features = split_outputs(reference(case["input_ids"], case["attention_mask"]))
            got, got_features = split_outputs(traced(case["input_ids"], case["attention_mask"]))
            ref, got = ref.float(), got.float()
            if ref_features is not None and got_features is not None:
                gap = (ref_features.float() - got_features.float()).abs().max().item()
                features_diff = gap if features_diff is None else float(np.max([features_diff, gap]))  # NaN stays
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
    if features_diff is not None and not features_diff <= tolerance:
        raise ExportError(f"parity check failed: features max |Δ| {features_diff:.2e} > {tolerance:.0e} (out-of-scope "
                          "detection reads them)")
    return {"max_abs_diff": worst["max_abs_diff"], "tolerance": tolerance, "cases": len(cases),
            "worst_shape": list(worst["shape"]),
            **({} if features_diff is None else {"features_max_abs_diff": features_diff})}


def evaluate(module, tokenizer, test: pd.DataFrame, labels: list[str], max_length: int, problem,
             batch_size: int = 64) -> tuple[dict, tuple[np.ndarray, np.ndarray | None]]:
    """The problem's headline metrics (accuracy and macro-F1, or the multi-label F1s) and the throughput of a
    traced module on the test split, and its outputs: probabilities [texts, labels] and features (None for a
    module without them), from which export builds the bundle's reference profile."""
    texts = test["text"].tolist()
    started = time.perf_counter()
    # Truncated whatever the run's long-text policy: these figures compare formats and variants on the same inputs
    # (training measured the policy itself on its test split, and the card carries both).
    probs, features = predict_outputs(module, tokenizer, texts, max_length, batch_size, activation=problem.probabilities)
    seconds = time.perf_counter() - started
    metrics = problem.headline(problem.targets(test, labels), probs)
    metrics["texts_per_second"] = round(len(texts) / seconds, 1)
    return metrics, (probs, features)


def check_neighbours(module, tokenizer, texts: list[str], max_length: int, tolerance: float, refuse: bool) -> dict:
    """The same texts alone and inside a batch of NEIGHBOUR_BATCH. fp32 must give each the same label either way
    (a difference is a masking or padding bug: refused when `refuse`); int8 quantises activations per batch, so
    its answers can move with their neighbours: measured, reported in the card and logged, not refused."""
    chosen = [texts[i % len(texts)] for i in range(NEIGHBOUR_BATCH)]
    batch = encode(tokenizer, chosen, max_length)
    worst, changed = 0.0, 0
    with torch.inference_mode():
        together = split_outputs(module(batch["input_ids"], batch["attention_mask"]))[0].float()
        for i, text in enumerate(chosen[:NEIGHBOUR_TEXTS]):
            one = encode(tokenizer, [text], max_length)
            alone = split_outputs(module(one["input_ids"], one["attention_mask"]))[0].float()[0]
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


def points_lost(result: dict, fp32: dict | None, gate: str) -> float:
    """Points of the gate metric a variant loses against fp32 (0 for fp32 itself)."""
    return 0.0 if fp32 is None else 100 * (fp32["test"][gate] - result["test"][gate])


def shortcomings(result: dict, fp32: dict, gate: str, max_accuracy_drop: float, tolerance: float) -> list[str]:
    """Why a variant should give way to the next candidate, if its format has one: accuracy lost past the gate,
    or answers that move with their batch neighbours (a served text's answer would then depend on the traffic
    it happens to be batched with, even where no label flipped among the texts checked)."""
    faults, lost, n = [], points_lost(result, fp32, gate), result["neighbours"]
    if lost > max_accuracy_drop:
        faults.append(f"loses {lost:.2f} {gate} points (limit {max_accuracy_drop})")
    if n["max_abs_diff"] > tolerance:
        faults.append(f"answers move with their batch neighbours (|Δlogit| up to {n['max_abs_diff']:.2e} > "
                      f"{tolerance:.0e}; {n['labels_changed']} of {n['texts']} labels changed)")
    return faults


@dataclass
class Candidate:
    """One variant as built and measured: `result` is what the card records, `outputs` its test probabilities and
    features (the reference profile if kept), `faults` why it should give way to the next candidate (empty: none)."""

    built: object  # export_formats.Built
    result: dict
    outputs: tuple
    faults: list[str]
