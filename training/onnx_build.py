"""Build the ONNX model of a bundle: export, fuse for ONNX Runtime, optionally quantise to int8.

Used by `training.export --format onnx`, which runs the same parity grid and accuracy gate on the result
as on a TorchScript trace. The dynamo exporter, onnxscript's ORT fusion (a graph whose attention did not
fuse is an error unless the caller accepts it), one self-contained file; int8 is dynamic quantisation first,
then static (QDQ, calibrated on training texts) when dynamic answers move with their batch neighbours or
lose more than the gate allows. Why, with the measurements: docs/design/onnx-export.md and
docs/design/quantisation.md.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)
OPSET = 18
# What a fused transformer layer turns into: one attention, two residual LayerNorms, one bias + GELU.
FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu")


class FusionError(Exception):
    """The optimised graph lacks fusions that were expected; the message gives the counts."""


def export(module: torch.nn.Module, example: dict, path: Path, outputs: tuple[str, ...] = ("logits",)) -> None:
    """(input_ids, attention_mask) -> `outputs` (logits; and features, training.features) with dynamic batch and
    sequence axes, to one file."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: length}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about things that do not apply here (torchvision ops, pytree deprecations);
        # what matters is checked afterwards by the parity grid.
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(module.eval(), (example["input_ids"], example["attention_mask"]), str(path),
                          dynamo=True, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                          output_names=list(outputs), dynamic_shapes=(axes, axes), external_data=False,
                          verbose=False, optimize=True)


def fuse(source: Path, target: Path) -> dict[str, int]:
    """Rewrite the graph with onnxruntime's fused transformer ops; returns how many of each op it has."""
    import onnx_ir as ir  # imported here: a TorchScript export never loads the ONNX toolchain (seconds)
    import onnxscript  # imported here: see above
    from onnxscript.rewriter.ort_fusions import optimize_for_ort  # imported here: see above

    model = ir.load(str(source))
    onnxscript.optimizer.optimize(model)
    model, _ = optimize_for_ort(model)
    ir.save(model, str(target))
    return op_counts(target)


def op_counts(path: Path) -> dict[str, int]:
    """Occurrences of the fused ops in the main graph of an .onnx file."""
    import onnx  # imported here: see fuse()

    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in FUSED_OPS}


# Encoders whose attention the rewriter cannot fuse, and why: the rest of each layer still fuses, and the
# export says so instead of failing. MPNet (all-mpnet-base-v2, the distillation teacher) adds a relative
# position bias to every layer's attention scores, a pattern onnxscript's attention fusion does not match
# (measured: Attention 0, SkipLayerNormalization 25, BiasGelu 12 on its 12 layers).
UNFUSABLE_ATTENTION = {"mpnet": "MPNet adds a relative position bias to its attention scores"}


def check_fusion(counts: dict[str, int], layers: int, model_type: str = "") -> None:
    """Every layer's attention fused (or, for UNFUSABLE_ATTENTION encoders, both residual LayerNorms and the
    feed-forward GELU of every layer); raises FusionError otherwise."""
    if counts.get("Attention", 0) >= layers:
        return
    rest_fused = counts.get("SkipLayerNormalization", 0) >= 2 * layers and counts.get("BiasGelu", 0) >= layers
    if model_type in UNFUSABLE_ATTENTION and rest_fused:
        log.warning("onnx: attention left unfused (%s); the LayerNorm and GELU fusions are in place",
                    UNFUSABLE_ATTENTION[model_type])
        return
    found = ", ".join(f"{op} {n}" for op, n in counts.items())
    raise FusionError(f"the ONNX graph of this {layers}-layer encoder fused {counts.get('Attention', 0)} "
                      f"attention blocks ({found}); onnxruntime would run the slow unfused path")


# The calibrator keeps every quantised MatMul's input and output for every calibration token in memory: up to
# 12 x hidden floats a token per layer (the feed-forward MatMuls are 4x wide), ~1.5x that at its peak
# (measured: 3.3 GB resident calibrating every MatMul of MiniLM-L6 on 256 rt-polarity texts of 73 tokens).
# Calibration is cut to this budget: all 256 texts for MiniLM-L6 on short texts, fewer for a base-size encoder.
CALIBRATION_BYTES = 4 * 2**30


def calibration_tokens(layers: int, hidden: int) -> int:
    """How many (padded) tokens calibration may hold within CALIBRATION_BYTES for this encoder's size."""
    return CALIBRATION_BYTES // int(layers * 12 * hidden * 4 * 1.5)


QUANTIZATION = {"dynamic": "dynamic (int8 weights, activations per batch)",
                "static": "static (int8 weights per channel, activation ranges calibrated on training texts; "
                          "fused attention and feed-forward outputs in fp32)"}


def quantize_dynamic_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantised once, activations per batch. Fused Attention becomes QAttention."""
    from onnxruntime.quantization import (  # imported here: see fuse()
        QuantType,
        quantize_dynamic,
    )

    with _quiet_quantizer():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def quantize_static_int8(source: Path, target: Path, calibration: dict) -> None:
    """Static int8 (QDQ) of the MatMuls but the feed-forward outputs, activation ranges from `calibration` (one
    padded batch of input_ids/attention_mask as numpy int64: the percentile calibrator needs one shape)."""
    from onnxruntime.quantization import (  # imported here: see fuse()
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class OneBatch(CalibrationDataReader):
        def __init__(self):
            self.batches = [calibration]

        def get_next(self):
            return self.batches.pop() if self.batches else None

    with _quiet_quantizer():
        quantize_static(str(source), str(target), OneBatch(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["MatMul"],
                        nodes_to_exclude=feed_forward_outputs(source), extra_options={"CalibPercentile": 99.999})


def int8_weights(path: Path) -> int:
    """How many of the graph's matrix-product weights are stored in int8: 2-D int8 initializers, whether an
    integer kernel takes them (dynamic) or a DequantizeLinear in front of a MatMul (static QDQ); embedding
    lookups (Gather) aside. The serving benchmark divides this by all Linear weights for the share of the
    model's FLOPs that int8 kernels run, so the count comes from the graph that is served, not from a rule."""

    import onnx  # imported here: see fuse()

    graph = onnx.load(str(path)).graph
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def looked_up(name: str) -> bool:
        return any(n.op_type == "Gather" or (n.op_type == "DequantizeLinear" and looked_up(n.output[0]))
                   for n in consumers[name])

    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(math.prod(t.dims) for t in graph.initializer
               if t.data_type in int8 and len(t.dims) == 2 and not looked_up(t.name))


def feed_forward_outputs(path: Path) -> list[str]:
    """Names of the MatMuls that narrow the feed-forward width back to the hidden size: their weight has more
    rows than columns ([intermediate, hidden]); every other MatMul's is square or widening."""
    import onnx  # imported here: see fuse()

    graph = onnx.load(str(path)).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul"
            and any(len(shapes.get(i, ())) == 2 and shapes[i][0] > shapes[i][1] for i in node.input)]


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs advice through the root logger ("consider pre-processing") and prints its
    calibration progress, neither of which applies to an already optimised graph; the result is measured."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
