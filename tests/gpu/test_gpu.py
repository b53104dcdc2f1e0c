"""The real handler on cuda:0 against the CPU handler, for tiny RoBERTa and DistilBERT bundles in fp32 and bf16
(traced on the CPU as training.export traces them), then a live TorchServe whose two workers must sit on the GPU
and answer over REST and gRPC like the CPU handler. Run with `make gpu-check` on a machine with a GPU."""
from __future__ import annotations

import json

import pytest

from training.tiny import make_tiny_bundle

TEXTS = ["the film was a delight", "my card has not arrived yet", "terrible service, I want a refund",
         "how do I top up my account"] * 8
# Scores are softmax probabilities. bf16 runs different kernels on the GPU and the CPU.
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}


def context(model_dir, gpu_id):
    from ts.context import Context, RequestProcessor

    manifest = {"model": {"modelName": "gpu-check", "serializedFile": "model.pt", "handler": "text_classifier.py"}}
    ctx = Context("gpu-check", str(model_dir), manifest, len(TEXTS), gpu_id, "0.12.0",
                  metrics=type("M", (), {"add_time": lambda *a, **k: None})(), model_yaml_config={})
    ctx.request_processor = [RequestProcessor({}) for _ in TEXTS]
    return ctx


def answers(model_dir, gpu_id) -> tuple[str, list[dict]]:
    from handlers.text_classifier import TextClassifierHandler

    handler = TextClassifierHandler()
    handler.initialize(context(model_dir, gpu_id))
    out = handler.handle([{"body": {"text": t}} for t in TEXTS], context(model_dir, gpu_id))
    return str(handler.scorer.device), [json.loads(o) for o in out]


def worst_diff(a: list[dict], b: list[dict]) -> float:
    return max(abs(x["scores"][k] - y["scores"][k]) for x, y in zip(a, b, strict=False) for k in y["scores"])


@pytest.mark.parametrize("variant", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_handler_on_the_gpu_answers_like_the_cpu(tmp_path, arch, variant):
    bundle = make_tiny_bundle(tmp_path / "bundle", arch=arch, variant=variant)
    gpu_device, on_gpu = answers(bundle, 0)
    cpu_device, on_cpu = answers(bundle, None)
    assert (gpu_device, cpu_device) == ("cuda:0", "cpu")
    assert [a["label"] for a in on_gpu] == [a["label"] for a in on_cpu]
    assert worst_diff(on_gpu, on_cpu) <= TOLERANCE[variant]


@pytest.mark.live  # `make test-fast` skips it like the rest of the live layer
def test_live_gpu_workers_answer_like_the_cpu(tmp_path):
    import shutil

    if shutil.which("java") is None:
        pytest.skip("java not installed: TorchServe needs a JRE 11+ (make java-check)")
    from textclf.torchserve import temporary
    from textclf.torchserve.archive import ArchiveConfig, build_archive
    from textclf.torchserve.grpc_client import StubsMissing, TorchServeGrpcClient, generate_stubs, load_stubs

    try:
        load_stubs()
    except StubsMissing:
        generate_stubs()
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with temporary.temporary_server(prefix="gpu-check-") as running:
        build_archive(ArchiveConfig(bundle=bundle, name="gpucheck", version="1.0", store=running.store,
                                    batch_size=8, max_batch_delay=5, min_workers=2, max_workers=2))
        client, ep = running.client(), running.endpoints
        client.register("gpucheck", "gpucheck-1.0.mar", initial_workers=2, batch_size=8, max_batch_delay=5)
        (described,) = client.describe("gpucheck")
        via_rest = client.predict("gpucheck", texts=TEXTS)
        with TorchServeGrpcClient(ep.grpc_inference, ep.grpc_management, ep.key_file,
                                  management_url=ep.management_url) as grpc:
            via_grpc = grpc.predict("gpucheck", texts=TEXTS)
    _, on_cpu = answers(bundle, None)
    assert [w.get("gpu") for w in described["workers"]] == [True, True]
    assert max(worst_diff(via_rest, on_cpu), worst_diff(via_grpc, on_cpu)) <= TOLERANCE["fp32"]
