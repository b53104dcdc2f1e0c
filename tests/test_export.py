"""training.export on the tiny runs trained in test_train.py: bundle contents, TorchScript parity with
the eager model, int8/bf16 variants, label round trip, and every refusal (which must write nothing)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from handlers import bundle, torchscript
from handlers.tokenization import encode
from tests.tiny_runs import INT_LABELS, STRING_LABELS, one_torch_thread
from textclf.core.errors import UserError
from training import bundle_writer, export, export_checks, export_formats
from training.export import ExportConfig, load_run, main
from training.export_checks import ExportError, check_parity, parity_cases, trace_example
from training.export_formats import make_variant, trace
from training.rundir import RunDirError

# Lengths differ, so every batch below carries padding.
TEXTS = ["the film was a delight", "a dull, lifeless script and wooden acting from everyone involved",
         "why", "my card has not arrived yet, what should I do about it"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def fp32_bundle(roberta_run, tmp_path_factory, _single_thread):
    out = tmp_path_factory.mktemp("export") / "fp32"
    results = main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), allow_weak=True))
    return out, results


def eager_logits(model_dir, texts, max_length):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = encode(AutoTokenizer.from_pretrained(model_dir), texts, max_length)
    with torch.inference_mode():
        return model(**enc).logits, enc


def jit_logits(bundle_dir, enc):
    """The bundle's module and its logits (it also outputs the features out-of-scope detection reads)."""
    module = torch.jit.load(str(bundle_dir / bundle.MODEL_FILE))
    with torch.inference_mode():
        logits, features = module(enc["input_ids"], enc["attention_mask"])
    assert features.dtype == torch.float32 and features.shape[0] == logits.shape[0]
    return module, logits


def leftovers(parent):
    """Hidden temp dirs write_bundle may have left next to the output."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")] if parent.exists() else []


# ---------------------------------------------------------------------------------------------- fp32 bundle

def test_fp32_bundle_files_and_card(fp32_bundle, roberta_run):
    out, results = fp32_bundle
    for name in (bundle.MODEL_FILE, bundle.CONFIG_FILE, bundle.INDEX_TO_NAME_FILE, bundle.CARD_FILE, "tokenizer.json"):
        assert (out / name).is_file(), name
    checked = bundle.check(out)
    labels, card = checked.labels, checked.raw
    assert labels == STRING_LABELS and checked.variant == "fp32" and checked.max_length == 32
    assert card["labels"] == STRING_LABELS
    assert card["model_sha256"] == bundle.sha256_file(out / bundle.MODEL_FILE)
    assert card["max_length"] == 32 and card["variant"] == "fp32"
    parity = card["export"]["fp32"]["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == 1e-4
    assert parity["cases"] == len(export_checks.PARITY_BATCHES) * 5  # lengths 1, 2, 7, 31, 32 at max_length 32
    assert card["export"]["fp32"]["test"]["samples"] == 12
    trained = json.loads((roberta_run / "metrics.json").read_text())["test"]
    assert card["training"]["test"] == {k: trained[k] for k in ("accuracy", "macro_f1", "samples")}
    assert card["problem_type"] == "single_label_classification"
    # The temperature applied at training time travels in config.json; the handler divides logits by it (a run
    # whose rule applied none, as this tiny one with a few validation rows, serves at T=1).
    assert checked.temperature == (json.loads((roberta_run / "run.json").read_text())["temperature"] or 1.0)
    assert results["accuracy_drop_points"] == 0
    assert json.loads((out / bundle.INDEX_TO_NAME_FILE).read_text()) == {"0": "mid", "1": "neg", "2": "pos"}
    assert leftovers(out.parent) == []


def test_fp32_bundle_matches_eager_model(fp32_bundle, roberta_run):
    out, _ = fp32_bundle
    for texts in (TEXTS, TEXTS[:1], TEXTS * 3):
        expected, enc = eager_logits(roberta_run / "model", texts, 32)
        _, got = jit_logits(out, enc)
        assert got.dtype == torch.float32 and got.shape == (len(texts), 3)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_integer_labels_round_trip_into_bundle(distilbert_run, tmp_path):
    out = tmp_path / "bundle"
    main(ExportConfig(run_dir=str(distilbert_run), output_dir=str(out), max_eval_samples=4, allow_weak=True))
    assert json.loads((out / bundle.CONFIG_FILE).read_text())["id2label"] == {"0": "1", "1": "2", "2": "10"}
    assert json.loads((out / bundle.INDEX_TO_NAME_FILE).read_text()) == {"0": "1", "1": "2", "2": "10"}
    assert json.loads((out / bundle.CARD_FILE).read_text())["labels"] == INT_LABELS
    assert json.loads((out / bundle.CARD_FILE).read_text())["export"]["fp32"]["test"]["samples"] == 4
    expected, enc = eager_logits(distilbert_run / "model", TEXTS, 32)
    _, got = jit_logits(out, enc)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- variants

@pytest.mark.parametrize("variant, options, graph_marker", [
    ("int8", {"quantize": "int8"}, "quantized::linear_dynamic"),
    ("bf16", {"dtype": "bf16"}, "BFloat16"),
])
def test_variant_bundle_loads_and_predicts(roberta_run, tmp_path, variant, options, graph_marker):
    out = tmp_path / variant
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")  # --force replaces the whole folder
    results = main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), max_accuracy_drop=100, force=True,
                                allow_weak=True, **options))
    assert not (out / "stale.txt").exists()
    assert set(results) == {"fp32", variant, "accuracy_drop_points"}
    card = bundle.check(out).raw
    assert card["variant"] == variant
    assert card["export"][variant]["parity"]["tolerance"] == export_checks.DEFAULT_TOLERANCE[variant]
    from transformers import AutoTokenizer

    enc = encode(AutoTokenizer.from_pretrained(out), TEXTS, 32)
    module, logits = jit_logits(out, enc)
    assert graph_marker in str(module.graph)
    assert logits.dtype == torch.float32 and logits.shape == (len(TEXTS), 3)
    assert torch.isfinite(logits).all()


def test_fp32_graph_has_no_variant_ops(fp32_bundle):
    graph = str(torch.jit.load(str(fp32_bundle[0] / bundle.MODEL_FILE)).graph)
    assert "quantized::" not in graph and "BFloat16" not in graph


def fixed_devices(module) -> list:
    return torchscript.fixed_devices(module.graph)


def test_bundle_graph_records_no_device(fp32_bundle):
    # A trace made on the CPU must still build its attention mask on a GPU worker's device.
    module = torch.jit.load(str(fp32_bundle[0] / bundle.MODEL_FILE))
    assert fixed_devices(module) == []
    assert "prim::device" in str(module.graph)


class MakesPositions(torch.nn.Module):
    """Like transformers' mask code: builds a tensor on the inputs' device."""

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return attention_mask.to(input_ids.device) * positions


def test_traced_device_follows_the_inputs():
    ids, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        pinned = torch.jit.freeze(torch.jit.trace(MakesPositions().eval(), (ids, mask)))
    assert len(fixed_devices(pinned)) >= 1
    with pytest.raises(RuntimeError):  # the recorded "cpu" clashes with inputs elsewhere
        pinned(ids.to("meta"), mask.to("meta"))
    follows = export_formats.trace(MakesPositions(), {"input_ids": ids, "attention_mask": mask})
    assert fixed_devices(follows) == []
    assert follows(ids.to("meta"), mask.to("meta")).device.type == "meta"
    assert torch.equal(follows(ids, mask), MakesPositions()(ids, mask))


# ---------------------------------------------------------------------------------------------- parity check

class IgnoresMask(torch.nn.Module):
    """A classic export bug: the attention mask never reaches the model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, torch.ones_like(attention_mask))


class Offset(torch.nn.Module):
    def __init__(self, inner, scale):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, input_ids, attention_mask):
        logits, features = self.inner(input_ids, attention_mask)
        return logits * self.scale + 0.01, features


@pytest.fixture(scope="module")
def parity_setup(roberta_run, _single_thread):
    model, tokenizer, _, run, test = load_run(roberta_run)
    with torch.no_grad():  # a confident head: logit differences from a wrong graph are far above 1e-4
        model.classifier.out_proj.weight.mul_(100)
    texts = test["text"].tolist()
    reference = make_variant(model, "fp32")
    example = trace_example(tokenizer, texts, run["max_length"])
    return reference, example, parity_cases(tokenizer, texts, run["max_length"])


def test_parity_passes_for_a_faithful_trace(parity_setup):
    reference, example, cases = parity_setup
    result = check_parity(reference, trace(reference, example), cases, 1e-4)
    assert result["max_abs_diff"] <= 1e-4 and result["cases"] == len(cases)
    assert all(tuple(c["input_ids"].shape) != export_checks.TRACE_SHAPE for c in cases)


def test_parity_names_the_shape_where_a_mask_bug_shows(parity_setup):
    reference, example, cases = parity_setup
    broken = trace(IgnoresMask(reference), example)
    with pytest.raises(ExportError) as info:
        check_parity(reference, broken, cases, 1e-4)
    match = re.search(r"batch (\d+) x length (\d+)", str(info.value))
    assert match, str(info.value)
    assert int(match.group(2)) > 1  # length 1 has no padding, so the bug cannot show there


def test_parity_catches_small_offsets_and_flipped_labels(parity_setup):
    reference, _, cases = parity_setup
    with pytest.raises(ExportError, match=r"max \|Δlogit\| (9\.99e-03|1\.00e-02) > 1e-04 at batch \d+ x length \d+"):
        check_parity(reference, Offset(reference, 1.0), cases, 1e-4)
    with pytest.raises(ExportError, match=r"predicted label differs at batch \d+ x length \d+"):
        check_parity(reference, Offset(reference, -1.0), cases, 1e-4)


# ---------------------------------------------------------------------------------------------- refusals

def test_accuracy_drop_refused_and_nothing_written(roberta_run, tmp_path, monkeypatch):
    real_evaluate, calls = export.evaluate, []

    def worse_variant(module, *args, **kwargs):
        metrics, probs = real_evaluate(module, *args, **kwargs)
        calls.append(metrics["accuracy"])
        if len(calls) == 2:  # fp32 is evaluated first, the variant second
            metrics["accuracy"] -= 0.25
        return metrics, probs

    monkeypatch.setattr(export, "evaluate", worse_variant)
    out = tmp_path / "exports" / "int8"
    refusal = r"int8 loses 25\.00 accuracy points .*--max-accuracy-drop 1\.0.*not exported"
    with pytest.raises(ExportError, match=refusal):
        main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), quantize="int8", allow_weak=True))
    assert len(calls) == 2
    assert not out.exists() and leftovers(out.parent) == []


def test_failed_write_leaves_no_bundle_and_keeps_the_old_one(fp32_bundle, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    source, _ = fp32_bundle
    parts = (source / bundle.MODEL_FILE, AutoTokenizer.from_pretrained(source),
             AutoConfig.from_pretrained(source), STRING_LABELS, {"max_length": 32})

    def broken_read_back(_):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_writer.bundle, "check", broken_read_back)
    with pytest.raises(OSError, match="disk full"):
        bundle_writer.write_bundle(tmp_path / "new", *parts, force=False)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "model.pt").write_text("previous bundle")
    with pytest.raises(OSError, match="disk full"):
        bundle_writer.write_bundle(old, *parts, force=True)
    assert [p.name for p in old.iterdir()] == ["model.pt"] and leftovers(tmp_path) == []


def test_existing_output_refused_without_force(roberta_run, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_not_a_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(RunDirError, match=r"run\.json: missing; is .* a finished training run"):
        main(ExportConfig(run_dir=str(tmp_path), output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_labels_disagreeing_with_run_json_refused(roberta_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(roberta_run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((copy / "run.json").read_text())
    meta["labels"] = list(reversed(meta["labels"]))
    (copy / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="id2label disagrees with run.json"):
        main(ExportConfig(run_dir=str(copy), output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, fragment", [
    ({"quantize": "int8", "dtype": "bf16"}, "not both"),
    ({"max_accuracy_drop": -1}, "--max-accuracy-drop"),
    ({"parity_tolerance": 0}, "--parity-tolerance"),
    ({"max_eval_samples": 0}, "--max-eval-samples"),
    ({"quantize": "int4"}, "--quantize"),
    ({"dtype": "fp16"}, "--dtype"),
])
def test_config_validation(overrides, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        ExportConfig(run_dir="r", output_dir="o", **overrides)


def test_export_error_is_a_user_error():
    # run_main turns UserErrors into one line + exit 2; ExportError must be one of them.
    assert issubclass(ExportError, UserError)


# ---------------------------------------------------------------------------------------------- output noise

# Library lines an export used to print (see export_formats.TRACE_WARNINGS and QUANTIZE_WARNINGS for causes).
NOISE = ("`loss_type=None` was set in the config", "is_gradient_checkpointing", "torch.ao.quantization is deprecated",
         "torch.quantize_per_tensor")


def test_int8_export_prints_no_library_noise(roberta_run, tmp_path):
    # A fresh interpreter: the lines are printed once per process, so an earlier export in this session
    # would hide them. PYTHONWARNINGS=default shows each warning wherever it is raised.
    env = dict(os.environ, PYTHONWARNINGS="default", OMP_NUM_THREADS="1")
    out = tmp_path / "int8"
    done = subprocess.run([sys.executable, "-m", "training.export", "--run-dir", str(roberta_run), "--output-dir",
                           str(out), "--quantize", "int8", "--max-accuracy-drop", "100", "--allow-weak"],
                          cwd=Path(export.__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bundle written to" in done.stderr  # the output was captured: our own log lines are there
    assert [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)] == []


class Warns(torch.nn.Module):
    def forward(self, input_ids, attention_mask):
        warnings.warn("a warning of ours", FutureWarning, stacklevel=2)
        return input_ids * attention_mask


def test_tracing_keeps_other_warnings():
    ids = torch.ones(2, 3, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_formats.trace(Warns(), {"input_ids": ids, "attention_mask": ids})
    assert "a warning of ours" in [str(w.message) for w in caught]


class NeighbourDependent(torch.nn.Module):
    """Logits that depend on the rest of the batch, as a padding bug (or per-batch int8 scaling) makes them."""

    def forward(self, input_ids, attention_mask):
        base = torch.stack([attention_mask.sum(1).float(), torch.zeros(len(input_ids))], dim=1)
        return base - 2 * float(len(input_ids) > 1) * base  # alone: label 0; in a batch: label 1


def test_labels_that_change_with_batch_neighbours_refuse_fp32_and_are_reported_otherwise(roberta_run, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(roberta_run / "model")
    with pytest.raises(ExportError, match=r"8 of 8 texts get a different label alone than inside a batch of 32"):
        export_checks.check_neighbours(NeighbourDependent(), tokenizer, TEXTS, 32, 1e-4, refuse=True)
    with caplog.at_level("WARNING"):
        got = export_checks.check_neighbours(NeighbourDependent(), tokenizer, TEXTS, 32, 1e-3, refuse=False)
    assert got["labels_changed"] == 8 and "depend on their batch neighbours" in caplog.text
