"""Serving benchmark: our paths against what users write instead, same texts, same fine-tuned model.

    python -m bench.serve_bench --run runs/bench/rt-polarity [--max-texts 200] [--name student3]

Rows (every one classifies the test split of the run's own data, rt-polarity for the training benchmark's run,
with the run's model):
  A  transformers pipeline("text-classification"), eager fp32, in-process, batch 1 and 32
  B  TorchServe's stock Hugging Face example behaviour (bench/stock_handler.py): every request padded to
     max_length, one text per forward, eager fp32, on a real TorchServe at concurrency 32
  C  our exported model in-process as the handler runs it, batch 1 and 32: TorchScript fp32, int8, bf16,
     ONNX Runtime fp32 and int8 (onnx-fp32, onnx-int8: training.export --format onnx) and AOTInductor fp32
     (pt2-fp32: training.export --format pt2, with its compile time and package size)
  D  our TorchServe deployment (token auth on, dynamic batching, one single-threaded worker per core) of
     the fastest variant within 0.5 accuracy points of fp32 whose answers do not depend on batch
     composition, at concurrency 1, 8 and 32
  D1 the same archive in the product's default deployment (1 worker using every core), concurrency 1 and 32
  D-pt2 the pt2-fp32 archive deployed as D, at concurrency 1 and 32 (unless D already serves it)
  D and D1 also with the texts sent in lists ({"texts": [...]}, --texts-per-request, 8 by default) at 32 / 8 = 4
     requests in flight: the same 32 texts in flight as concurrency 32, for a fraction of the requests
Writes bench/results/serve-<cpu>.{json,md,png}, one set per CPU class (amx, avx512, avx2; serve-<cpu>-quick.*
with --max-texts), for the training benchmark's MiniLM; another model (a distilled student, a teacher) is
named with --name, into serve-<cpu>-<name>.*, beside it rather than over it. Fails (exit 1) when a correctness
check does not hold; timings are reported, never asserted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import serve_report, write_results
from bench.flops import MATMUL_N, FlopModel, best_limit, compute_limit, limit_for, mixed_limit
from bench.serve_report import cpu_class
from bench.serve_runs import (
    Measured,
    archive_noop,
    archive_ours,
    archive_stock,
    bundle_classifier,
    measure_inprocess,
    measure_server,
    pipeline_classifier,
    torchserve,
)
from handlers.checks import check_int
from handlers.config import HandlerConfig, parse_chunk_size
from handlers.device import cpu_has_bf16
from textclf.core import options, paths
from textclf.core.errors import UserError
from textclf.core.options import command_line, option
from training.export_checks import DEFAULT_TOLERANCE
from training.rundir import RunDir

log = logging.getLogger(__name__)
ROOT = paths.ROOT
RESULTS = Path(__file__).parent / "results"
PROG = "python -m bench.serve_bench"
VARIANTS = ("fp32", "int8", "bf16", "onnx-fp32", "onnx-int8", "pt2-fp32")
ONNX, PT2 = "onnx-", "pt2-"  # variant prefixes of the ONNX Runtime and AOTInductor bundles; the rest names the arithmetic
MAX_DROP_POINTS = 0.5  # a variant is accuracy-preserving within this many points of fp32
FP32_TOLERANCE = 1e-3  # |Δlogit| within which two fp32 paths (eager, traced, padded) may break a tie differently
CORES = os.cpu_count() or 1
IN_FLIGHT = 32  # texts in flight on a server row at the top concurrency, one per request or in lists


@dataclass
class ServeBenchConfig:
    """Serving benchmark: HF pipeline, stock TorchServe, our model in-process and our TorchServe deployment."""

    run: str = option("run directory from training.train or training.distill")
    data: str | None = option("folder holding test.csv, with the run's text and label columns (default: the data "
                              "the run was trained on, from its run.json)", None)
    max_texts: int | None = option("use the first N test texts (quick runs; results go to serve-<cpu>-quick.*)", None)
    exports: str | None = option("where the fp32/int8/bf16 bundles are kept (default RUN/serve-bench)", None)
    variant: str | None = option("serve this variant in D instead of the fastest accuracy-preserving one", None)
    workers: int = option("D: TorchServe workers (default one per core)", CORES)
    threads: int = option("D: torch threads per worker", 1)
    batch_size: int = option("D: TorchServe batch size", 32)
    max_batch_delay: int = option("D: TorchServe max batch delay (ms)", 1)
    chunk_size: int | str | None = option(
        "C and D: texts per forward pass after sorting a batch by length (handler option chunk_size: an "
        "integer, 'none' for one pass, or 'auto': by variant, see handlers/config.py)", "auto", parse=parse_chunk_size)
    repeats: int = option("passes per row, in-process rows interleaved; the fastest is kept (other work on a shared "
                          "host only ever slows a pass down)", 3)
    texts_per_request: int = option(
        "D and D1: also send the texts in lists of this many per request ({\"texts\": [...]}), with 32 texts in "
        "flight like concurrency 32 (1: one text per request only)", 8)
    default_deployment: bool = option(
        "also measure D1: the product's default deployment, 1 worker using every core, at concurrency 1 and 32", True)
    skip_stock: bool = option("skip row B (tuning runs)", False)
    out: str = option("results folder", str(RESULTS))
    name: str | None = option("name of the model measured, for a run that is not the training benchmark's MiniLM (a "
                              "student, a teacher): its report goes to serve-<cpu>-NAME.* instead of the CPU "
                              "class's own", None)

    def __post_init__(self):
        RunDir(self.run).check_finished()
        data = self.test_data()
        if not (data / "test.csv").is_file():
            raise UserError(f"benchmark data not found: {data / 'test.csv'} (pass --data: a folder holding test.csv; "
                            "the run's own data, if it came from the hub, is not a folder)")
        if self.variant is not None and self.variant not in VARIANTS:
            raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.variant is not None and self.variant not in available_variants(cpu_has_bf16()):
            raise UserError(f"--variant {self.variant}: this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
        if self.chunk_size != "auto":
            check_int("--chunk-size", self.chunk_size, 1, optional=True, also="'auto'", error=UserError)
        check_int("--max-texts", self.max_texts, 1, optional=True, error=UserError)
        check_int("--texts-per-request", self.texts_per_request, 1, error=UserError)
        if IN_FLIGHT % self.texts_per_request:
            raise UserError(f"--texts-per-request divides the {IN_FLIGHT} texts in flight into whole requests: one of "
                            f"{', '.join(str(n) for n in range(1, IN_FLIGHT + 1) if IN_FLIGHT % n == 0)}; "
                            f"got {self.texts_per_request}")
        for name in ("repeats", "workers", "threads", "batch_size"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1, error=UserError)
        check_int("--max-batch-delay", self.max_batch_delay, 0, error=UserError)
        if self.name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.name):
            raise UserError(f"--name is part of a file name: lower-case letters, digits and '-', got {self.name!r}")

    def test_data(self) -> Path:
        """--data, else the run's own data (its labels and columns match by construction)."""
        return Path(self.data or RunDir(self.run).read_run().get("config", {}).get("data") or ".")


def report_stem(config: ServeBenchConfig, isa: list[str]) -> str:
    """One report per CPU class (runs on another machine class never overwrite it), per model named (--name),
    quick runs apart from full ones."""
    return "-".join(["serve", cpu_class(isa), *([config.name] if config.name else []),
                     *([] if config.max_texts is None else ["quick"])])


def available_variants(has_bf16: bool) -> tuple[str, ...]:
    """The variants worth measuring here: without bf16 instructions bf16 runs a reference path 8-14x slower
    than fp32 (it would take most of the benchmark's time and could never be the fastest)."""
    return VARIANTS if has_bf16 else tuple(v for v in VARIANTS if v != "bf16")


def precision(variant: str) -> str:
    """The arithmetic of a variant (fp32, int8 or bf16), whichever runtime runs it: tolerances, compute limits
    and chunk sizes follow it."""
    return variant.removeprefix(ONNX).removeprefix(PT2)


def runtime_name(variant: str) -> str:
    return "ONNX Runtime" if variant.startswith(ONNX) else "AOTInductor" if variant.startswith(PT2) else "TorchScript"


def export_format(variant: str) -> str:
    """training.export's --format of a variant's bundle."""
    return "onnx" if variant.startswith(ONNX) else "pt2" if variant.startswith(PT2) else "torchscript"


def load_test(data: Path, run: dict, max_texts: int | None) -> tuple[list[str], np.ndarray]:
    """The test texts and their label indices in the run's label order, read by the run's own text and label
    columns (run.json; runs from before columns were recorded used text,label)."""
    labels, columns = run["labels"], run.get("config", {})
    text_column, label_column = columns.get("text_column", "text"), columns.get("label_column", "label")
    test = pd.read_csv(data / "test.csv")
    if max_texts:
        test = test.head(max_texts)
    unknown = sorted(set(test[label_column].astype(str)) - set(labels))
    if unknown:
        raise UserError(f"{data / 'test.csv'}: labels {unknown} are not among the run's labels {labels}")
    index = {name: i for i, name in enumerate(labels)}
    return test[text_column].astype(str).tolist(), np.array([index[str(y)] for y in test[label_column]])


def ensure_exports(run: Path, cache: Path, variants: tuple[str, ...]) -> dict[str, Path]:
    """One bundle per variant of the run, exported with training.export once per model and exporter.

    Export's own accuracy gate is opened wide: this benchmark measures every variant on all test texts
    and applies the stricter 0.5-point rule itself. So is its baseline floor: a benchmark measures a model,
    it does not ship it (and the tests run it on tiny random ones)."""
    from training.export import ExportConfig
    from training.export import main as export_main

    # Re-exported when the weights or the exporter change.
    sources = [RunDir(run).weights_file, ROOT / "training" / "export.py", ROOT / "training" / "onnx_build.py",
               ROOT / "training" / "export_formats.py"]
    stamp = hashlib.sha256(b"".join(p.read_bytes() for p in sources if p.is_file())).hexdigest()
    out = {}
    for variant in variants:
        bundle, mark = cache / variant, cache / f"{variant}.source-sha256"
        if not bundle.is_dir() or not mark.is_file() or mark.read_text().strip() != stamp:
            log.info("exporting %s to %s", variant, bundle)
            arithmetic = precision(variant)
            export_main(ExportConfig(run_dir=str(run), output_dir=str(bundle),
                                     format=export_format(variant),
                                     quantize="int8" if arithmetic == "int8" else "none",
                                     dtype="bf16" if arithmetic == "bf16" else "fp32", max_accuracy_drop=100.0,
                                     max_eval_samples=200, force=True, allow_weak=True))
            mark.write_text(stamp + "\n")
        out[variant] = bundle
    return out


def decisive_disagreements(ref: Measured, other_preds: np.ndarray, tolerance: float) -> tuple[int, int]:
    """(texts where predictions differ although ref's top-2 logit margin exceeds tolerance, all differences)."""
    top2 = np.sort(ref.scores, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > tolerance
    differ = ref.preds != other_preds
    return int((differ & decisive).sum()), int(differ.sum())


def row(key: str, label: str, variant: str, mode: str, m: Measured, gold: np.ndarray, flops: np.ndarray,
        batch: int | None = None, concurrency: int | None = None, texts_per_request: int = 1) -> dict:
    lat = np.array(m.latencies_s) * 1000
    achieved = float(flops.sum()) / m.wall_s / 1e9
    return {"key": key, "label": label, "variant": variant, "mode": mode, "batch": batch, "concurrency": concurrency,
            **({"texts_per_request": texts_per_request} if texts_per_request > 1 else {}),
            "texts": len(gold), "texts_per_s": round(len(gold) / m.wall_s, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "accuracy": round(float((m.preds == gold).mean()), 4),
            "gflops": round(achieved, 2), **m.extra}


def server_key(deployment: str, concurrency: int, texts_per_request: int = 1) -> str:
    """A server row's key: D-c32 for one text per request, D-c4x8 for 4 requests in flight of 8 texts each."""
    return f"{deployment}-c{concurrency}" + (f"x{texts_per_request}" if texts_per_request > 1 else "")


def list_bodies(texts: list[str], per_request: int) -> list[bytes]:
    """The texts in order, `per_request` to a request (the last one may hold fewer)."""
    return [json.dumps({"texts": texts[i:i + per_request]}).encode() for i in range(0, len(texts), per_request)]


def parse_ours(bodies: list[bytes], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One answer per text, in order: a {"text"} request answers one object, a {"texts"} request a list."""
    answers = []
    for body in bodies:
        answer = json.loads(body)
        answers += answer if isinstance(answer, list) else [answer]
    # Of a large label set (banking77's 77) the handler returns the best few scores only (handlers/config.py,
    # MANY_LABELS); the others count as 0 here. The checks compare the served labels, never these scores.
    probs = np.array([[a["scores"].get(name, 0.0) for name in labels] for a in answers], dtype=np.float32)
    return np.array([labels.index(a["label"]) for a in answers]), probs


def main(config: ServeBenchConfig) -> dict:
    run, out = Path(config.run), Path(config.out)
    meta = RunDir(run).read_run()
    labels, max_length, model_dir = meta["labels"], int(meta["max_length"]), RunDir(run).model_dir
    data = config.test_data()
    texts, gold = load_test(data, meta, config.max_texts)
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": os.getloadavg(),
               "machine": machine(), "run": str(run), "data": str(data), "texts": len(texts), "config": asdict(config),
               "command": command_line(PROG, config)}
    busy = os.getloadavg()[0] > 0.5 * CORES
    if busy:
        log.warning("the host is busy (load average %.2f on %d CPUs): other work slows every row, and rows that "
                    "use several threads far more than single-threaded ones; rerun on a quiet host", os.getloadavg()[0], CORES)
    log.info("compute limit (matmul %d^3)", MATMUL_N)
    limit_start = compute_limit()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    flop_model = FlopModel.of(AutoModelForSequenceClassification.from_pretrained(model_dir))
    flops = np.array([flop_model.per_text(int(t)) for t in tokens])
    results["flops"] = {**flop_model.describe(), "mean_tokens": round(float(tokens.mean()), 2),
                        "mean_gflop_per_text": round(float(flops.mean()) / 1e9, 4)}
    rows, runs = [], {}
    variants = available_variants(cpu_has_bf16())
    results["skipped_variants"] = {v: "no bf16 instructions on this CPU (AVX512-BF16 or AMX)"
                                   for v in VARIANTS if v not in variants}

    def record(key, label, variant, mode, passes, **kw):
        m = min(passes, key=lambda p: p.wall_s)
        m.extra["passes_texts_per_s"] = [round(len(texts) / p.wall_s, 1) for p in passes]
        runs[key] = m
        rows.append(row(key, label, variant, mode, m, gold, flops, **kw))
        r = rows[-1]
        log.info("%-10s %8.1f texts/s  p50 %7.2f ms  p99 %7.2f ms  accuracy %.4f", key, r["texts_per_s"], r["p50_ms"],
                 r["p99_ms"], r["accuracy"])

    def add(key, label, variant, mode, measure, **kw):
        record(key, label, variant, mode, [measure() for _ in range(config.repeats)], **kw)

    # In-process rows run in interleaved rounds (A, C-fp32, ..., then again): on a shared host a slow
    # minute then costs every row a pass, instead of skewing the ratio between two rows.
    inprocess = []  # (key, label, variant, batch, classify)
    classify = pipeline_classifier(model_dir, labels)
    inprocess += [(f"A-b{batch}", "HF pipeline, eager fp32", "fp32", batch, classify) for batch in (1, 32)]
    bundles = ensure_exports(run, Path(config.exports) if config.exports else run / "serve-bench", variants)
    chunking = HandlerConfig(chunk_size=config.chunk_size)  # what the handler would run, per variant
    for variant in variants:
        classify = bundle_classifier(bundles[variant], max_length, chunking.resolve_chunk_size(precision(variant), "cpu"))
        inprocess += [(f"C-{variant}-b{batch}", f"ours in-process, {runtime_name(variant)} {precision(variant)}",
                       variant, batch, classify)
                      for batch in (1, 32)]
    passes = {key: [] for key, *_ in inprocess}
    for round_ in range(config.repeats):
        log.info("in-process round %d of %d", round_ + 1, config.repeats)
        for key, _, _, batch, classify in inprocess:
            passes[key].append(measure_inprocess(classify, texts, batch))
    for key, label, variant, batch, _ in inprocess:
        record(key, label, variant, "in-process", passes[key], batch=batch)

    results["batch_invariance"] = invariance = batch_invariance(runs)
    chosen = config.variant or choose_variant(rows, {v: r["ok"] for v, r in invariance.items()})
    results["chosen_variant"] = chosen
    log.info("serving %s in D", chosen)
    if "pt2-fp32" in bundles:
        results["pt2"] = pt2_package(bundles["pt2-fp32"])
        for r in rows:  # the package's cost next to its rows
            if r["variant"] == "pt2-fp32":
                r.update(results["pt2"])
    with torchserve() as srv:
        if not config.skip_stock:
            srv.client.register("stock", archive_stock(model_dir, srv.store, "stock", max_length), batch_size=1,
                                max_batch_delay=5, response_timeout=300)
            stock_bodies = [t.encode() for t in texts]
            add("B-c32", "stock TorchServe example: pad to max_length, 1 text/forward", "fp32", "TorchServe",
                lambda: measure_server(srv, "stock", stock_bodies, "text/plain; charset=utf-8", 32,
                                       lambda bodies: (np.array([labels.index(b.decode()) for b in bodies]), None)),
                concurrency=32)
            srv.client.unregister("stock")
        bodies_in = [json.dumps({"text": t}).encode() for t in texts]
        n = config.texts_per_request
        # (concurrency, texts per request): one text per request, then the same texts in flight as at concurrency
        # 32 sent in lists, which pays TorchServe's cost per request (HTTP, auth, queueing) once per list
        lists = [(IN_FLIGHT // n, n)] if n > 1 else []
        deployments = [("D", chosen, config.workers, config.threads, [(1, 1), (8, 1), (IN_FLIGHT, 1), *lists])]
        if config.default_deployment:
            deployments.append(("D1", chosen, 1, CORES, [(1, 1), (IN_FLIGHT, 1), *lists]))
        if "pt2-fp32" in bundles and chosen != "pt2-fp32":  # the AOTInductor package served as D serves the chosen one
            deployments.append(("D-pt2", "pt2-fp32", config.workers, config.threads, [(1, 1), (IN_FLIGHT, 1)]))
        results["deployments"], results["paired"] = {}, {}
        classifiers = {key: classify for key, _, _, _, classify in inprocess}
        for key, variant, workers, threads, levels in deployments:
            name = f"ours-{key.lower()}"
            # Every pass sends the same texts: the response cache would answer passes 2 and 3 (bench.cache_bench
            # measures it). Labels only: the in-process rows they are checked against have no detector.
            handler = {"chunk_size": config.chunk_size, "threads": threads, "cache_size": 0, "out_of_scope": False}
            served_chunk = chunking.resolve_chunk_size(precision(variant), "cpu")
            mar = archive_ours(bundles[variant], srv.store, name, config.batch_size, config.max_batch_delay, workers,
                               handler)
            srv.client.register(name, mar, initial_workers=workers, batch_size=config.batch_size,
                                max_batch_delay=config.max_batch_delay, response_timeout=300)
            for concurrency, per_request in levels:
                # Each server pass is paired with an in-process pass of its reference row measured just before
                # it: the targets compare the two within a pair, so drift of the host between the in-process
                # rounds and the server rows minutes later cannot decide them.
                ref_batch = 1 if concurrency * per_request == 1 else 32
                ref_key, server_passes, ref_passes = f"C-{variant}-b{ref_batch}", [], []
                bodies = bodies_in if per_request == 1 else list_bodies(texts, per_request)
                for _ in range(config.repeats):
                    ref_passes.append(measure_inprocess(classifiers[ref_key], texts, ref_batch))
                    server_passes.append(measure_server(srv, name, bodies, "application/json", concurrency,
                                                        lambda answers: parse_ours(answers, labels)))
                row_key = server_key(key, concurrency, per_request)
                record(row_key, f"ours on TorchServe, {variant}, {workers} worker(s) x {threads} thread(s)", variant,
                       "TorchServe", server_passes, concurrency=concurrency, texts_per_request=per_request)
                results["paired"][row_key] = paired_passes(ref_key, ref_passes, server_passes, len(texts))
            srv.client.unregister(name)
            results["deployments"][key] = {"workers": workers, "threads": threads, "batch_size": config.batch_size,
                                           "max_batch_delay_ms": config.max_batch_delay, "chunk_size": served_chunk,
                                           "token_auth": True}

        results["floor"] = measure_floor(srv, bodies_in, config)
    results["loadavg_end"], results["host_busy_at_start"] = os.getloadavg(), busy
    # Measured before and after the rows, the better of the two: a limit lowered by other work on the
    # host would flatter every row's fraction.
    results["limit"] = limit = best_limit(limit_start, compute_limit())
    limits = {v: variant_limit(limit, v, bundles[v], flop_model, tokens) for v in variants}
    results["int8_share"] = {v: share for v, (_, share) in limits.items() if share is not None}
    for r in rows:
        r["limit_gflops"] = limits[r["variant"]][0]
        r["limit_fraction"] = round(r["gflops"] / r["limit_gflops"], 4)
    results["rows"] = rows
    results["checks"] = checks(runs, rows, chosen, invariance)
    results["targets"] = serve_report.targets(rows, chosen, limits[chosen][0], results["flops"]["mean_gflop_per_text"],
                                              results.get("paired"))
    write(results, out, report_stem(config, results["machine"]["isa"]))
    failed = [c for c in results["checks"] if not c["ok"]]
    if failed:
        for c in failed:
            print(f"CHECK FAILED: {c['name']}: {c['detail']}", file=sys.stderr)
        sys.exit(1)
    return results


def variant_limit(limit: dict, variant: str, bundle: Path, flop_model: FlopModel, tokens) -> tuple[float, float | None]:
    """(the compute limit a variant's rows are measured against, the share of FLOPs it runs in int8 or None).
    int8 variants are partly fp32 (see bench.flops): TorchScript int8 quantises every Linear; an ONNX int8
    graph is read for what it holds in int8 (static int8 leaves the fused attention and the feed-forward
    outputs in fp32)."""
    if precision(variant) != "int8":
        return limit_for(limit, precision(variant)), None
    from handlers.bundle import ONNX_FILE
    from training.onnx_build import int8_weights

    onnx_file = bundle / ONNX_FILE
    share = flop_model.int8_share(tokens, int8_weights(onnx_file) if onnx_file.is_file() else flop_model.p_tok)
    return mixed_limit(limit, share), round(share, 4)


def pt2_package(bundle: Path) -> dict:
    """What the AOTInductor package cost to build, from its bundle's card (training.export records it)."""
    card = json.loads((bundle / "model_card.json").read_text())
    compiled = card["export"][card["variant"]]["aotinductor"]
    return {key: compiled[key] for key in ("compile_seconds", "export_seconds", "package_bytes")}


def measure_floor(srv, bodies: list[bytes], config: ServeBenchConfig) -> dict:
    """TorchServe's own concurrency-1 latency: a handler that answers at once, batched like D and D1."""
    srv.client.register("floor", archive_noop(srv.store, "floor", config.batch_size, config.max_batch_delay),
                        batch_size=config.batch_size, max_batch_delay=config.max_batch_delay)
    passes = [measure_server(srv, "floor", bodies, "application/json", 1, lambda b: (np.zeros(len(b), dtype=int), None))
              for _ in range(config.repeats)]
    srv.client.unregister("floor")
    p50 = sorted(round(float(np.median(p.latencies_s)) * 1000, 2) for p in passes)
    return {"p50_ms": p50, "median_p50_ms": p50[len(p50) // 2], "batch_size": config.batch_size,
            "max_batch_delay_ms": config.max_batch_delay}


def paired_passes(ref_key: str, ref: list[Measured], served: list[Measured], texts: int) -> dict:
    """Per pair (in-process reference pass, server pass): both throughputs and p50 latencies."""
    def p50(m: Measured) -> float:
        return round(float(np.percentile(np.array(m.latencies_s) * 1000, 50)), 2)

    return {"reference": ref_key, "reference_texts_per_s": [round(texts / m.wall_s, 1) for m in ref],
            "texts_per_s": [round(texts / m.wall_s, 1) for m in served],
            "reference_p50_ms": [p50(m) for m in ref], "p50_ms": [p50(m) for m in served]}


def choose_variant(rows: list[dict], invariant: dict[str, bool]) -> str:
    """The fastest variant at batch 32 in-process among those within MAX_DROP_POINTS of fp32's accuracy
    whose answers do not depend on what else is in the batch (see batch_invariance)."""
    c32 = {r["variant"]: r for r in rows if r["key"].startswith("C-") and r["batch"] == 32}
    fp32 = c32["fp32"]["accuracy"]
    eligible = [v for v, r in c32.items() if 100 * (fp32 - r["accuracy"]) <= MAX_DROP_POINTS and invariant[v]]
    return max(eligible, key=lambda v: c32[v]["texts_per_s"])


def batch_invariance(runs: dict[str, Measured]) -> dict[str, dict]:
    """Per variant: do a text's logits stay within the variant's parity tolerance (training.export) when
    it is run alone (batch 1) instead of with 31 neighbours (batch 32)? int8 dynamic quantisation scales
    every batch by its own activation range, so it fails this by design; fp32 and bf16 do not."""
    return {variant: answers_alone(variant, runs[f"C-{variant}-b1"].scores, runs[f"C-{variant}-b32"].scores)
            for variant in VARIANTS if f"C-{variant}-b1" in runs}


def answers_alone(variant: str, alone: np.ndarray, batched: np.ndarray) -> dict:
    """The same texts' logits answered alone and in a batch, [texts, labels] each: within the variant's export
    parity tolerance (ok) or not, and how many predictions differ."""
    diff, tolerance = float(np.abs(alone - batched).max()), DEFAULT_TOLERANCE[precision(variant)]
    return {"ok": diff <= tolerance, "max_abs_logit_diff": round(diff, 6), "tolerance": tolerance,
            "differing": int((alone.argmax(-1) != batched.argmax(-1)).sum())}


def checks(runs: dict[str, Measured], rows: list[dict], chosen: str, invariance: dict) -> list[dict]:
    """Correctness of the benchmark itself: the same model must give the same answers on every path."""
    out = []
    acc = {r["key"]: r["accuracy"] for r in rows}
    ref = runs["C-fp32-b32"]
    drift = 100 * abs(acc["C-fp32-b32"] - acc["A-b32"])
    out.append({"name": "export keeps fp32 accuracy", "ok": drift <= MAX_DROP_POINTS,
                "detail": f"TorchScript fp32 {acc['C-fp32-b32']:.4f} vs eager pipeline {acc['A-b32']:.4f}"})
    for key in ("A-b1", "A-b32", "B-c32", "C-fp32-b1"):
        if key in runs:
            decisive, total = decisive_disagreements(ref, runs[key].preds, FP32_TOLERANCE)
            out.append({"name": f"{key} predicts like C-fp32-b32", "ok": decisive == 0,
                        "detail": f"{decisive} decisive / {total} total differing texts (tolerance {FP32_TOLERANCE:g})"})
    inv = invariance[chosen]
    out.append({"name": f"served variant {chosen}: logits do not depend on batch composition", "ok": inv["ok"],
                "detail": f"max |Δlogit| batch 1 vs batch 32 {inv['max_abs_logit_diff']:.2e} (tolerance {inv['tolerance']:g}); "
                          f"{inv['differing']} predictions differ"})
    served = {r["key"]: r["variant"] for r in rows if r["key"].startswith("D")}  # D rows: chosen; D-pt2: pt2-fp32
    for key, variant in served.items():
        tolerance = DEFAULT_TOLERANCE[precision(variant)]
        decisive, total = decisive_disagreements(runs[f"C-{variant}-b32"], runs[key].preds, tolerance)
        out.append({"name": f"{key} predicts like C-{variant}-b32 in-process", "ok": decisive == 0,
                    "detail": f"{decisive} decisive / {total} total differing texts (tolerance {tolerance:g})"})
    drop = 100 * (acc["C-fp32-b32"] - acc[f"C-{chosen}-b32"])
    out.append({"name": f"served variant {chosen} within {MAX_DROP_POINTS} points of fp32", "ok": drop <= MAX_DROP_POINTS,
                "detail": f"{drop:+.2f} points"})
    return out


def machine() -> dict:
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": model, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags.split()],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write(results: dict, out: Path, stem: str) -> None:
    write_results(out, stem, results, serve_report.markdown(results))
    serve_report.plot(results, out / f"{stem}.png")
    log.info("results in %s.{json,md,png}", out / stem)
    print(serve_report.table(results))


if __name__ == "__main__":
    sys.exit(options.run(main, ServeBenchConfig, prog=PROG))
