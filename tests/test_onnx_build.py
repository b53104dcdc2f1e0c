"""`training.export --format onnx` (training/onnx_build.py) on the tiny RoBERTa and DistilBERT runs: the bundle,
parity with eager, the fused-op record, int8, and refusals that write nothing."""
from __future__ import annotations

import json

import pytest
import torch

from cli import UserError
from handlers import bundle
from handlers.onnx_runtime import CPU, OnnxModel
from tests.test_export import TEXTS, distilbert_run, eager_logits, leftovers, roberta_run  # noqa: F401 (fixtures)
from tests.test_train import one_torch_thread
from training import onnx_build
from training.export import ExportConfig, ExportError, main

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def onnx_bundle(roberta_run, tmp_path_factory, _single_thread):
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    return out, main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="onnx"))


def onnx_logits(bundle_dir, enc):
    with torch.inference_mode():
        return OnnxModel(bundle_dir / bundle.ONNX_FILE, 1, [CPU])(enc["input_ids"], enc["attention_mask"])


def test_onnx_bundle_is_one_self_contained_file_named_by_its_card(onnx_bundle):
    out, results = onnx_bundle
    card = bundle.check(out)
    assert card.runtime == "onnxruntime" and card.model_path == out / bundle.ONNX_FILE
    assert not (out / bundle.MODEL_FILE).exists() and not list(out.glob("*.data"))  # no side weights file
    raw = json.loads((out / bundle.CARD_FILE).read_text())
    assert raw["model_sha256"] == bundle.sha256_file(out / bundle.ONNX_FILE)
    assert {"onnx", "onnxruntime", "onnxscript"} <= set(raw["versions"])
    assert results["fp32"]["parity"]["max_abs_diff"] <= 1e-4
    assert results["fp32"]["neighbours"]["max_abs_diff"] <= 1e-4


def test_onnx_fuses_every_attention_layer_and_records_it(onnx_bundle, roberta_run):
    out, results = onnx_bundle
    layers = json.loads((roberta_run / "model" / "config.json").read_text())["num_hidden_layers"]
    fused = json.loads((out / bundle.CARD_FILE).read_text())["export"]["fp32"]["fused_ops"]
    assert fused == onnx_build.op_counts(out / bundle.ONNX_FILE) == results["fp32"]["fused_ops"]
    assert fused["Attention"] == layers and fused["SkipLayerNormalization"] >= 2 * layers


@pytest.mark.parametrize("run_fixture", ["roberta_run", "distilbert_run"])
def test_onnx_matches_eager_on_ragged_batches(run_fixture, request, tmp_path):
    run = request.getfixturevalue(run_fixture)
    out = tmp_path / "onnx"
    main(ExportConfig(run_dir=str(run), output_dir=str(out), format="onnx"))
    eager, enc = eager_logits(run / "model", TEXTS, 32)
    got = onnx_logits(out, enc)
    assert (got - eager).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), eager.argmax(-1))


def test_onnx_int8_is_quantized_and_gated(roberta_run, tmp_path):
    out = tmp_path / "int8"
    results = main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="onnx", quantize="int8"))
    card = json.loads((out / bundle.CARD_FILE).read_text())
    assert card["runtime"] == "onnxruntime" and card["variant"] == "int8"
    assert card["export"]["int8"]["quantization"].startswith("dynamic")
    assert results["int8"]["parity"]["against"] == "fp32"  # no eager int8 twin: measured, the gate decides
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / bundle.ONNX_FILE)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_unfused_graph_refused_unless_accepted(roberta_run, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_build, "op_counts", lambda path: {"Attention": 0, "SkipLayerNormalization": 0,
                                                               "BiasGelu": 0})
    out = tmp_path / "exports" / "onnx"
    with pytest.raises(ExportError, match=r"fused 0 attention blocks.*--no-require-fusion"):
        main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="onnx"))
    assert not out.exists() and leftovers(out.parent) == []
    main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="onnx", require_fusion=False))
    assert bundle.check(out).runtime == "onnxruntime"


def test_broken_onnx_variant_refused_by_parity(roberta_run, tmp_path, monkeypatch):
    """An exporter that got the arithmetic wrong (here: logits shifted) never becomes a bundle."""
    real_export = onnx_build.export

    def shifted(module, example, path):
        class Shifted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids, attention_mask) + 0.01

        real_export(Shifted(), example, path)

    monkeypatch.setattr(onnx_build, "export", shifted)
    out = tmp_path / "exports" / "onnx"
    with pytest.raises(ExportError, match=r"parity check failed: max \|Δlogit\| 1\.00e-02 > 1e-04"):
        main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="onnx"))
    assert not out.exists() and leftovers(out.parent) == []


def test_bf16_is_torchscript_only():
    with pytest.raises(UserError, match="bf16 is a TorchScript variant"):
        ExportConfig(run_dir="r", output_dir="o", format="onnx", dtype="bf16")
