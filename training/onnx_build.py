"""Build the ONNX model of a bundle: export, fuse for ONNX Runtime, optionally quantise to int8.

Used by `training.export --format onnx`, which runs the same parity grid and accuracy gate on the result
as on a TorchScript trace. Why these choices (torch 2.13, onnx 1.23, onnxscript 0.7, onnxruntime 1.32):

- The dynamo exporter (torch.onnx.export's default). The older TorchScript-based exporter (dynamo=False)
  gives a graph onnxruntime's own BERT optimizer fuses fully, but on MiniLM-L6 its logits were 0.03 away from
  eager at lengths other than the example's: it records shapes of the example input. The dynamo graph agrees
  to 1e-7 at every length, but onnxruntime's optimizer does not recognise its attention subgraph (only
  SkipLayerNormalization and BiasGelu fused).
- So fusion is onnxscript's ORT rewriter (`optimize_for_ort`), written for dynamo graphs: on BERT-family
  encoders it fuses each layer's attention into one `Attention` op, both residual LayerNorms into
  `SkipLayerNormalization` and the FFN's bias + GELU into `BiasGelu`, with eager or SDPA attention alike.
  The fused-op counts go into the model card, and fewer than one attention per layer is an error unless
  the caller accepts an unfused graph (`--no-require-fusion`), because an unfused graph is the slow path
  this format exists to avoid.
- One self-contained .onnx file (external_data=False): these encoders are far below ONNX's 2 GB limit, and a
  side `.data` file is one more thing to lose between export, archive and worker.
- int8 is onnxruntime's dynamic quantisation (int8 weights, activations quantised per batch at run time).
"""
from __future__ import annotations

import collections
import logging
import warnings
from pathlib import Path

import torch

log = logging.getLogger("training.export")
OPSET = 18
# What a fused transformer layer turns into: one attention, two residual LayerNorms, one bias + GELU.
FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu")


class FusionError(Exception):
    """The optimised graph lacks fusions that were expected; the message gives the counts."""


def export(module: torch.nn.Module, example: dict, path: Path) -> None:
    """(input_ids, attention_mask) -> logits with dynamic batch and sequence axes, to one file."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: length}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about things that do not apply here (torchvision ops, pytree deprecations);
        # what matters is checked afterwards by the parity grid.
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(module.eval(), (example["input_ids"], example["attention_mask"]), str(path),
                          dynamo=True, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_shapes=(axes, axes), external_data=False,
                          verbose=False, optimize=True)


def fuse(source: Path, target: Path) -> dict[str, int]:
    """Rewrite the graph with onnxruntime's fused transformer ops; returns how many of each op it has."""
    import onnx_ir as ir
    import onnxscript
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(source))
    onnxscript.optimizer.optimize(model)
    model, _ = optimize_for_ort(model)
    ir.save(model, str(target))
    return op_counts(target)


def op_counts(path: Path) -> dict[str, int]:
    """Occurrences of the fused ops in the main graph of an .onnx file."""
    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in FUSED_OPS}


def check_fusion(counts: dict[str, int], layers: int) -> None:
    """Every layer's attention fused; raises FusionError otherwise."""
    if counts.get("Attention", 0) < layers:
        found = ", ".join(f"{op} {n}" for op, n in counts.items())
        raise FusionError(f"the ONNX graph of this {layers}-layer encoder fused {counts.get('Attention', 0)} "
                          f"attention blocks ({found}); onnxruntime would run the slow unfused path")


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantised once, activations per batch. Fused Attention becomes QAttention."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
