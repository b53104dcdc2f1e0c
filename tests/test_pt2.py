"""--format pt2: torch.export + AOTInductor packages (training/export_formats.py Pt2Format) and their runtime
(handlers/aot_inductor.py). Compiling is the cost here (~15 s a package on one core): one export of the tiny run
(fp32 and bf16, two packages) and one tiny bundle for the session (tests/conftest.py), shared by every test."""
from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch
from torch._inductor import config as inductor_config

from handlers import aot_inductor, bundle, runtimes
from handlers.bundle import BundleError
from tests.conftest import PT2_LABELS
from tests.test_handler import make_handler, run
from tests.tiny_runs import one_torch_thread
from textclf.core.errors import UserError
from training import export
from training.export import ExportConfig, main
from training.export_checks import ExportError
from training.tiny import MAX_LENGTH

TEXTS = ["the film was a delight", "why was my payment declined at the shop", "why",
         "a dull, lifeless script and wooden acting " * 20]  # the last one is cut at max_length


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def exported(roberta_run, tmp_path_factory, _single_thread):
    """The tiny run exported as pt2 bf16: export checks (and records) fp32 first, so one export covers both."""
    out = tmp_path_factory.mktemp("pt2-export") / "bundle"
    results = main(ExportConfig(run_dir=str(roberta_run), output_dir=str(out), format="pt2", dtype="bf16",
                                max_accuracy_drop=100, allow_weak=True))
    return out, results


@pytest.fixture(scope="module")
def models(pt2_tiny_bundles, _single_thread):
    """The tiny bundle's model.pt2 and model.pt, loaded as the handler loads them."""
    return {name: runtimes.load(bundle.check(path), "cpu", 1)[0] for name, path in pt2_tiny_bundles.items()}


# ---------------------------------------------------------------------------------------------- export

def test_pt2_export_passes_the_checks_and_writes_its_card(exported):
    out, results = exported
    checked = bundle.check(out)
    card = checked.raw
    assert checked.runtime == "aotinductor" and checked.variant == "bf16" and card["device"] == "cpu"
    assert checked.model_path.name == "model.pt2"
    assert card["model_sha256"] == bundle.sha256_file(out / "model.pt2")
    fp32, bf16 = card["export"]["fp32"], card["export"]["bf16"]
    assert fp32["parity"]["max_abs_diff"] <= 1e-4 and fp32["parity"]["tolerance"] == 1e-4
    assert bf16["parity"]["tolerance"] == 5e-2 and bf16["parity"]["max_abs_diff"] <= 5e-2
    assert fp32["neighbours"]["labels_changed"] == 0 and fp32["neighbours"]["max_abs_diff"] <= 1e-4
    for result in (fp32, bf16):
        compiled = result["aotinductor"]
        assert compiled["inductor_configs"] == {"freezing": True, "cpp.dynamic_threads": True}
        assert compiled["device"] == "cpu" and compiled["dynamic_shapes"] == {"batch": [1, aot_inductor.MAX_BATCH],
                                                                               "length": [1, 32]}
        assert compiled["compile_seconds"] > 0 and compiled["export_seconds"] > 0 and compiled["package_bytes"] > 0
    assert "torch" in card["versions"]  # what the package was compiled with
    assert "accuracy_drop_points" in results and card["export"]["accuracy_drop_points"] == results["accuracy_drop_points"]
    assert aot_inductor.read_metadata(out / "model.pt2")["AOTI_DEVICE_KEY"] == "cpu"


def test_pt2_export_answers_like_the_eager_model(exported, roberta_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handlers.tokenization import encode
    from training.export_formats import make_variant

    out, _ = exported
    eager = make_variant(AutoModelForSequenceClassification.from_pretrained(roberta_run / "model").eval(), "bf16")
    enc = encode(AutoTokenizer.from_pretrained(out), TEXTS, 32)
    model, _ = runtimes.load(bundle.check(out), "cpu", 1)
    with torch.inference_mode():
        got, want = model(enc["input_ids"], enc["attention_mask"]), eager(enc["input_ids"], enc["attention_mask"])
    assert got[0].dtype == torch.float32 and got[0].shape == (len(TEXTS), 3)
    assert (got[0] - want[0]).abs().max() <= 5e-2 and torch.equal(got[0].argmax(-1), want[0].argmax(-1))


def test_no_compiler_is_one_line_before_any_work(roberta_run, tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("the run was loaded before the compiler was checked")

    monkeypatch.setattr(export, "load_run", never)
    # torch reads $CXX into this setting at import; this is the setting its compiler search reads
    with inductor_config.patch({"cpp.cxx": (None, "no-such-c++")}), pytest.raises(ExportError) as info:
        main(ExportConfig(run_dir=str(roberta_run), output_dir=str(tmp_path / "out"), format="pt2"))
    message = str(info.value)
    assert "\n" not in message and "needs a C++ compiler to export (not to serve)" in message
    assert "no-such-c++" in message and "apt-get install g++" in message and "CXX" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, fragment", [
    ({"format": "pt2", "quantize": "int8"}, "--quantize int8 is not offered with --format pt2; use --format "
                                            "torchscript or onnx for int8"),
    ({"device": "cuda"}, "--device cuda is for --format pt2"),
    ({"format": "onnx", "device": "cuda"}, "--device cuda is for --format pt2"),
    ({"format": "pt2", "device": "tpu"}, "--device"),
])
def test_pt2_options_refused(overrides, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)) as info:
        ExportConfig(run_dir="r", output_dir="o", **overrides)
    assert "\n" not in str(info.value)


def test_cuda_refused_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"--device cuda: no CUDA device here"):
        ExportConfig(run_dir="r", output_dir="o", format="pt2", device="cuda")
    ExportConfig(run_dir="r", output_dir="o", format="pt2", dtype="bf16")  # bf16 is offered


# ---------------------------------------------------------------------------------------------- runtime

def test_tiny_pt2_bundle_is_checked_and_described(pt2_tiny_bundles):
    card = bundle.check(pt2_tiny_bundles["aotinductor"])
    assert card.runtime == "aotinductor" and card.raw["device"] == "cpu"
    assert card.raw["aotinductor"]["inductor_configs"]["freezing"] is True


@pytest.mark.parametrize("batch, length", [(1, MAX_LENGTH), (1, 2), (1, 1), (3, 2), (17, 31), (520, MAX_LENGTH)])
def test_pt2_answers_like_torchscript_at_every_shape(models, batch, length):
    generator = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(5, 300, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[::2, max(1, length // 2):] = 0  # every other row padded
    with torch.inference_mode():
        got, want = models["aotinductor"](ids, mask), models["torchscript"](ids, mask)
    assert got.dtype == torch.float32 and got.shape == (batch, len(PT2_LABELS))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_pt2_takes_non_contiguous_and_int32_inputs(models):
    ids = torch.randint(5, 300, (4, 2 * MAX_LENGTH))[:, ::2]  # a strided view, as a sliced batch can be
    mask = torch.ones(4, MAX_LENGTH, dtype=torch.int32)
    with torch.inference_mode():
        got = models["aotinductor"](ids, mask)
        want = models["torchscript"](ids.contiguous(), mask.long())
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_batches_over_the_exported_bound_run_in_slices():
    calls = []

    def runner(ids, mask):
        calls.append(len(ids))
        return ids.float().sum(1, keepdim=True), mask.float()

    model = aot_inductor.AotModel(runner, "cpu", max_batch=3)
    logits, features = model(torch.arange(14).view(7, 2), torch.ones(7, 2, dtype=torch.long))
    assert calls == [3, 3, 1] and logits[:, 0].tolist() == [1, 5, 9, 13, 17, 21, 25] and features.shape == (7, 2)


def test_handler_answers_as_the_torchscript_bundle(pt2_tiny_bundles):
    rows = [{"body": {"texts": TEXTS}}, {"body": {"text": TEXTS[0]}}]
    got = run(make_handler(pt2_tiny_bundles["aotinductor"]), rows)
    want = run(make_handler(pt2_tiny_bundles["torchscript"]), rows)
    for (status, _, answer), (want_status, _, expected) in zip(got, want, strict=True):
        assert status == want_status == 200
        for a, b in zip(answer if isinstance(answer, list) else [answer],
                        expected if isinstance(expected, list) else [expected], strict=True):
            assert a["label"] == b["label"] and list(a["scores"]) == list(b["scores"])
            assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=1e-5)


def fake_package(path, **metadata):
    with zipfile.ZipFile(path, "w") as package:  # metadata only: a loader that got past the check would fail
        package.writestr("model/data/aotinductor/model/abc.wrapper_metadata.json", json.dumps(metadata))
    return path


def test_a_package_for_another_device_is_refused_before_loading(tmp_path):
    path = fake_package(tmp_path / "model.pt2", AOTI_DEVICE_KEY="cuda", AOTI_COMPUTE_CAPABILITY="90")
    with pytest.raises(BundleError) as info:
        aot_inductor.load(path, "cpu", 1)
    assert str(info.value) == ("model.pt2 was compiled for cuda; this worker runs on cpu: export it on the device that "
                               "will serve it (textclf export --format pt2 --device cpu)")
    cpu_package = fake_package(tmp_path / "cpu.pt2", AOTI_DEVICE_KEY="cpu", AOTI_CPU_ISA="AVX2", AOTI_MACHINE="x86_64")
    with pytest.raises(BundleError, match=r"^model\.pt2 was compiled for cpu; this worker runs on cuda: .*--device cuda\)$"):
        aot_inductor.load(cpu_package, "cuda:1", 1)


def test_a_package_for_another_cpu_or_gpu_class_is_refused():
    meta = {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "AVX512 AVX512_VNNI AMX_TILE", "AOTI_MACHINE": "x86_64"}
    assert aot_inductor.refusal(meta, "cpu", "x86_64", cpu_has=lambda word: True) is None
    why = aot_inductor.refusal(meta, "cpu", "x86_64", cpu_has=lambda word: word != "AMX_TILE")
    assert why == ("model.pt2 was compiled for a CPU with AVX512 AVX512_VNNI AMX_TILE; this CPU lacks AMX_TILE: export "
                   "it on a host of the serving CPU class")
    assert "compiled for x86_64 machines; this one is aarch64" in aot_inductor.refusal(meta, "cpu", "aarch64")
    gpu = {"AOTI_DEVICE_KEY": "cuda", "AOTI_COMPUTE_CAPABILITY": "90", "AOTI_MACHINE": "x86_64"}
    seen = []
    assert aot_inductor.refusal(gpu, "cuda:1", "x86_64", cuda_capability=lambda i: seen.append(i) or "90") is None
    assert seen == [1]
    assert "compute capability 90; this worker's GPU has 80" in aot_inductor.refusal(
        gpu, "cuda", "x86_64", cuda_capability=lambda i: "80")


def test_not_a_package_is_a_bundle_error(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable AOTInductor package"):
        aot_inductor.read_metadata(tmp_path / "model.pt2")
    with zipfile.ZipFile(tmp_path / "empty.pt2", "w") as package:
        package.writestr("x/data/other.txt", "")
    with pytest.raises(BundleError, match="not an AOTInductor package"):
        aot_inductor.read_metadata(tmp_path / "empty.pt2")
