"""GPU path check: the real handler on cuda:0 against the CPU handler, then a live TorchServe with GPU workers.

    python -m bench.gpu_check [--bundle DIR] [--no-live]      (make gpu-check)

Needs a CUDA device; without one it says so and exits 3 (nothing to check). Writes
bench/results/gpu_check.json. In-process, it checks tiny random RoBERTa and DistilBERT bundles
(fp32 and bf16), traced on the CPU as `training.export` traces them, and the bundle given with
--bundle: same labels as the CPU handler, scores within a tolerance. Live, it archives the first
fp32 bundle, registers it with two workers on a TorchServe with free loopback ports, and checks that
TorchServe put the workers on the GPU and that REST and gRPC answers match the CPU handler.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
TEXTS = ["the film was a delight", "my card has not arrived yet", "terrible service, I want a refund",
         "how do I top up my account"] * 8
# Scores are softmax probabilities. bf16 runs different kernels on the GPU and the CPU.
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}


def context(model_dir: Path, gpu_id):
    from ts.context import Context, RequestProcessor

    manifest = {"model": {"modelName": "gpu-check", "serializedFile": "model.pt", "handler": "text_classifier.py"}}
    ctx = Context("gpu-check", str(model_dir), manifest, len(TEXTS), gpu_id, "0.12.0",
                  metrics=type("M", (), {"add_time": lambda *a, **k: None})(), model_yaml_config={})
    ctx.request_processor = [RequestProcessor({}) for _ in TEXTS]
    return ctx


def run(model_dir: Path, gpu_id) -> tuple[str, list[dict], float]:
    from handlers.text_classifier import TextClassifierHandler

    handler = TextClassifierHandler()
    handler.initialize(context(model_dir, gpu_id))
    rows = [{"body": {"text": t}} for t in TEXTS]
    out = handler.handle(rows, context(model_dir, gpu_id))
    started = time.perf_counter()
    for _ in range(20):
        handler.handle(rows, context(model_dir, gpu_id))
    per_batch_ms = (time.perf_counter() - started) / 20 * 1000
    return str(handler.device), [json.loads(o) for o in out], per_batch_ms


def worst_diff(a: list[dict], b: list[dict]) -> float:
    return max(abs(x["scores"][k] - y["scores"][k]) for x, y in zip(a, b) for k in y["scores"])


def check_in_process(name: str, bundle: Path, variant: str) -> dict:
    gpu_device, gpu_out, gpu_ms = run(bundle, 0)
    cpu_device, cpu_out, cpu_ms = run(bundle, None)
    worst = worst_diff(gpu_out, cpu_out)
    return {"bundle": name, "variant": variant, "handler_device": gpu_device, "cpu_device": cpu_device,
            "same_labels": [g["label"] for g in gpu_out] == [c["label"] for c in cpu_out],
            "max_score_diff": worst, "batch": len(TEXTS), "gpu_ms_per_batch": round(gpu_ms, 2),
            "cpu_ms_per_batch": round(cpu_ms, 2),
            "ok": gpu_device == "cuda:0" and worst <= TOLERANCE[variant]}


def check_live(bundle: Path) -> dict:
    """Two workers on a real TorchServe: both on a GPU, answers equal to the in-process CPU handler's."""
    from bench.serve_runs import archive_ours, torchserve
    from tsclient.grpc_client import StubsMissing, TorchServeGrpcClient, generate_stubs, load_stubs

    try:
        load_stubs()
    except StubsMissing:
        generate_stubs()
    with torchserve() as srv:  # temporary state dir and model store, always stopped and removed
        # model-config.yaml inside the archive decides the worker count, not the register call
        mar = archive_ours(bundle, srv.store, "gpucheck", batch_size=8, max_batch_delay=5, workers=2, handler={})
        srv.client.register("gpucheck", mar, initial_workers=2, batch_size=8, max_batch_delay=5)
        (described,) = srv.client.describe("gpucheck")
        workers = [{"id": w.get("id"), "gpu": w.get("gpu"), "status": w.get("status")} for w in described["workers"]]
        via_rest = srv.client.predict("gpucheck", texts=TEXTS)
        ep = srv.endpoints
        with TorchServeGrpcClient(ep.grpc_inference, ep.grpc_management, ep.key_file,
                                  management_url=ep.management_url) as grpc:
            via_grpc = grpc.predict("gpucheck", texts=TEXTS)
    _, cpu_out, _ = run(bundle, None)
    rest_diff, grpc_diff = worst_diff(via_rest, cpu_out), worst_diff(via_grpc, cpu_out)
    return {"workers": workers, "rest_max_score_diff": rest_diff, "grpc_max_score_diff": grpc_diff,
            "ok": len(workers) == 2 and all(w["gpu"] for w in workers)
            and max(rest_diff, grpc_diff) <= TOLERANCE["fp32"]}


def main(bundle: Path | None, live: bool = True) -> dict:
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU check needs one (the CPU path is covered by make test)")
        sys.exit(3)
    from tests.bundles import make_tiny_bundle

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        bundles = [(f"tiny-{arch}-{variant}", make_tiny_bundle(Path(work) / f"{arch}-{variant}", arch=arch,
                                                               variant=variant), variant)
                   for arch in ("roberta", "distilbert") for variant in ("fp32", "bf16")]
        if bundle is not None:
            card = json.loads((bundle / "model_card.json").read_text())
            bundles.insert(0, (bundle.name, bundle, card.get("variant", "fp32")))
        result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                  "in_process": [check_in_process(name, path, variant) for name, path, variant in bundles]}
        if live:
            result["live"] = check_live(next(path for _, path, variant in bundles if variant == "fp32"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not all(r["ok"] for r in result["in_process"]) or (live and not result["live"]["ok"]):
        sys.exit("GPU check failed: see the figures above")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="an export bundle to check as well")
    parser.add_argument("--no-live", dest="live", action="store_false", help="skip the live TorchServe check")
    args = parser.parse_args()
    main(args.bundle, args.live)
