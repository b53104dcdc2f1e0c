"""GPU path check: run the real handler in-process on cuda:0 and compare it with the CPU handler.

    python -m bench.gpu_check [--bundle DIR]      (make gpu-check)

Needs a CUDA device; without one it says so and exits 3 (nothing to check). Writes
bench/results/gpu_check.json. Uses a tiny random RoBERTa bundle unless --bundle is given.
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


def main(bundle: Path | None) -> dict:
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU check needs one (the CPU path is covered by make test)")
        sys.exit(3)
    if bundle is None:
        from tests.bundles import make_tiny_bundle

        bundle = make_tiny_bundle(Path(tempfile.mkdtemp()) / "bundle")
    gpu_device, gpu_out, gpu_ms = run(bundle, 0)
    cpu_device, cpu_out, cpu_ms = run(bundle, None)
    worst = max(abs(g["scores"][k] - c["scores"][k]) for g, c in zip(gpu_out, cpu_out) for k in c["scores"])
    result = {"gpu": torch.cuda.get_device_name(0), "handler_device": gpu_device, "cpu_device": cpu_device,
              "same_labels": [g["label"] for g in gpu_out] == [c["label"] for c in cpu_out],
              "max_score_diff": worst, "batch": len(TEXTS), "gpu_ms_per_batch": round(gpu_ms, 2),
              "cpu_ms_per_batch": round(cpu_ms, 2), "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if gpu_device != "cuda:0" or not result["same_labels"] or worst > 1e-3:
        sys.exit("GPU check failed: see the figures above")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="an export bundle (default: a tiny random one)")
    main(parser.parse_args().bundle)
