"""Chunk size on a GPU: how fast a batch runs in length-sorted chunks of 4, 8, 16, 32 or in one pass.

    python -m bench.gpu_chunks      (on a CUDA host; writes bench/results/gpu_chunks.json)

A random MiniLM-sized BERT (6 layers x 384) is traced on the CPU as `training.export` traces, loaded on
cuda:0 and fed batches of random lengths (8-60 tokens, padded to the longest as the handler pads).
This decided `chunk_size: auto` on GPUs (handlers/config.py). Without CUDA it exits 3.
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import torch

from handlers.batching import forward_by_length
from training.export_formats import LogitsOnly, trace

RESULTS = Path(__file__).parent / "results"
BATCHES, CHUNKS, REPS = (8, 32, 128), (4, 8, 16, 32, None), 10


def random_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(8, 61, (n,), generator=g)
    mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, mask.shape, generator=g) * mask
    return ids, mask


def texts_per_s(model, batches: list, chunk, device: str) -> float:
    with torch.inference_mode():
        for ids, mask in batches[:2]:
            forward_by_length(model, ids.to(device), mask.to(device), chunk)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(REPS):
            for ids, mask in batches:
                forward_by_length(model, ids.to(device), mask.to(device), chunk)
        torch.cuda.synchronize()
    return REPS * sum(len(ids) for ids, _ in batches) / (time.perf_counter() - start)


def main() -> dict:
    if not torch.cuda.is_available():
        print("no CUDA device here: this measures chunk sizes on a GPU")
        sys.exit(3)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                    intermediate_size=1536, num_labels=2)).eval()
    g = torch.Generator().manual_seed(1)
    ids, mask = random_batch(2, g)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    for variant, model in (("fp32", base), ("bf16", base.to(torch.bfloat16))):
        buf = io.BytesIO()
        torch.jit.save(trace(LogitsOnly(model).eval(), {"input_ids": ids, "attention_mask": mask}), buf)
        buf.seek(0)
        served = torch.jit.load(buf, map_location="cuda:0")
        for n in BATCHES:
            batches = [random_batch(n, g) for _ in range(6)]
            for chunk in [c for c in CHUNKS if c is None or c < n]:
                row = {"variant": variant, "batch": n, "chunk": chunk,
                       "texts_per_s": round(texts_per_s(served, batches, chunk, "cuda:0"), 1)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_chunks.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
