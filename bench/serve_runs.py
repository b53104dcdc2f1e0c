"""The measured paths of the serving benchmark: in-process (A, C) and through a real TorchServe (B, D).

In-process rows call a classify(texts) -> scores function on consecutive chunks of `batch` texts in
the data's order; a call's latency is the time until its whole chunk is answered. Server rows send
one text per request from a closed-loop load generator (bench/loadgen.py) and time every request.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

from bench.loadgen import run_load
from handlers.batching import forward_by_length, split_outputs
from handlers.tokenization import encode
from textclf.torchserve import properties, server, temporary
from textclf.torchserve.archive import ARCHIVER, ArchiveConfig, build_archive
from textclf.torchserve.keys import bearer
from textclf.torchserve.rest import TorchServeClient

STOCK_HANDLER = Path(__file__).parent / "stock_handler.py"
NOOP_HANDLER = Path(__file__).parent / "noop_handler.py"


@dataclass
class Measured:
    preds: np.ndarray  # label index per text
    scores: np.ndarray | None  # [texts, labels]: logits (C), probabilities (A, D), None (B: label only)
    latencies_s: list[float]
    wall_s: float
    extra: dict = field(default_factory=dict)


def measure_inprocess(classify: Callable[[list[str]], np.ndarray], texts: list[str], batch: int,
                      warmup: int = 2) -> Measured:
    for i in range(warmup):  # first calls pay one-off costs (allocation, kernel selection)
        classify(texts[i * batch: (i + 1) * batch] or texts[:batch])
    chunks, latencies = [], []
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        t = time.perf_counter()
        chunks.append(classify(texts[i: i + batch]))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    scores = np.concatenate(chunks)
    return Measured(scores.argmax(-1), scores, latencies, wall)


def pipeline_classifier(model_dir: Path, labels: list[str]):
    """Baseline A: what a user writes instead, transformers.pipeline on the eager fp32 model."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    index = {name: i for i, name in enumerate(labels)}

    def classify(texts: list[str]) -> np.ndarray:
        out = pipe(texts, batch_size=len(texts), top_k=None, truncation=True)
        scores = np.zeros((len(texts), len(labels)), dtype=np.float32)
        for row, ranked in zip(scores, out, strict=False):
            for item in ranked:
                row[index[item["label"]]] = item["score"]
        return scores

    return classify


def bundle_classifier(bundle_dir: Path, max_length: int, chunk_size: int | None):
    """C: the exported model as the handler runs it (its runtime, one encode call, length-sorted chunks)."""
    from transformers import AutoTokenizer

    from handlers import bundle, runtimes

    model, _ = runtimes.load(bundle.check(bundle_dir), "cpu", torch.get_num_threads())
    tokenizer = AutoTokenizer.from_pretrained(bundle_dir, local_files_only=True)

    def classify(texts: list[str]) -> np.ndarray:
        enc = encode(tokenizer, texts, max_length)
        with torch.inference_mode():
            outputs = forward_by_length(model, enc["input_ids"], enc["attention_mask"], chunk_size)
            return split_outputs(outputs)[0].float().numpy()  # bundles with a detector also return features

    return classify


# ---- TorchServe ------------------------------------------------------------------------------

@dataclass
class Server:
    running: temporary.Running
    client: TorchServeClient

    @property
    def endpoints(self) -> properties.Endpoints:
        return self.running.endpoints

    @property
    def store(self) -> Path:
        return self.running.store

    @property
    def key(self) -> str:
        return self.running.key("inference")

    def group_cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by the server's processes: the JVM frontend and the Python workers."""
        out = {"frontend": 0.0, "workers": 0.0}
        for role, procs in server.processes(server.running_pid(self.running.cfg)).items():
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                out["workers" if role == "workers" else "frontend"] += t.user + t.system
        return out


@contextmanager
def torchserve() -> Iterator[Server]:
    """A temporary TorchServe (temporary.temporary_server) with a patient client: in-process rows run first."""
    with temporary.temporary_server(prefix="serve-bench-") as running:
        yield Server(running, running.client(timeout=300))


def archive_ours(bundle_dir: Path, store: Path, name: str, batch_size: int, max_batch_delay: int, workers: int,
                 handler: dict) -> str:
    build_archive(ArchiveConfig(bundle=bundle_dir, name=name, version="1.0", store=store, batch_size=batch_size,
                                max_batch_delay=max_batch_delay, min_workers=workers, max_workers=workers,
                                handler=handler))
    return f"{name}-1.0.mar"


def archive_stock(model_dir: Path, store: Path, name: str, max_length: int) -> str:
    """Baseline B's archive: the Hugging Face model dir as is, bench/stock_handler.py, batch size 1."""
    config = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 5, "responseTimeout": 300,
              "handler": {"max_length": max_length}}
    return _archive_bench_handler(store, name, STOCK_HANDLER, config, model_dir)


def archive_noop(store: Path, name: str, batch_size: int, max_batch_delay: int) -> str:
    """The floor's archive: bench/noop_handler.py and no model, batched like the deployment it is compared with."""
    config = {"minWorkers": 1, "maxWorkers": 1, "batchSize": batch_size, "maxBatchDelay": max_batch_delay,
              "responseTimeout": 60}
    return _archive_bench_handler(store, name, NOOP_HANDLER, config)


def _archive_bench_handler(store: Path, name: str, handler: Path, model_config: dict, model_dir: Path | None = None) -> str:
    """torch-model-archiver on a benchmark handler (not the product's): with model_dir, its safetensors is the
    serialized file and the rest of the folder goes along as extra files."""
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as stage:
        config = Path(stage) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config))
        cmd = [*ARCHIVER, "--model-name", name, "--version", "1.0", "--handler", str(handler),
               "--config-file", str(config), "--export-path", str(store)]
        if model_dir is not None:
            extra = Path(stage) / "extra"
            shutil.copytree(model_dir, extra, ignore=shutil.ignore_patterns("model.safetensors", "*.bin"))
            cmd += ["--serialized-file", str(model_dir / "model.safetensors"), "--extra-files", str(extra)]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TMPDIR": stage})
    return f"{name}.mar"


def measure_server(srv: Server, name: str, bodies: list[bytes], content_type: str, concurrency: int,
                   parse: Callable[[list[bytes]], tuple[np.ndarray, np.ndarray | None]], warmup: int = 64) -> Measured:
    """Send every body once at `concurrency`; every answer must be HTTP 200. `parse` turns the answer
    bodies into (label index per text, scores or None)."""
    host, port = srv.endpoints.inference_url.split("//", 1)[1].rsplit(":", 1)
    headers = {**bearer(srv.key), "Content-Type": content_type}
    path = f"/predictions/{name}"
    if warmup:
        run_load(host, int(port), path, bodies[:warmup], headers, concurrency)
    before = srv.group_cpu_s()
    result = run_load(host, int(port), path, bodies, headers, concurrency)
    after = srv.group_cpu_s()
    bad = [(i, s) for i, s in enumerate(result.statuses) if s != 200]
    if bad:
        i, status = bad[0]
        raise RuntimeError(f"{name} at concurrency {concurrency}: {len(bad)} of {len(bodies)} requests failed, "
                           f"first HTTP {status}: {result.bodies[i][:200]!r}")
    cores = {f"{k}_cores": round((after[k] - before[k]) / result.wall_s, 2) for k in after}
    cores["loadgen_cores"] = round(result.client_cores, 2)
    preds, scores = parse(result.bodies)
    return Measured(preds, scores, result.latencies_s, result.wall_s, extra=cores)
