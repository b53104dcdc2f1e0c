"""Soak: a steady mixed load on two workers while a worker is killed and the default version switches.

    python -m bench.soak [--duration 60] [--concurrency 32] [--bundle runs/demo/export]   (= make bench-soak)

One temporary TorchServe (free loopback ports, token authorization on) serves v1 and v2 of one model,
two workers each. `concurrency` keep-alive connections send requests back to back for `duration`
seconds, ~10% of them invalid in several ways; at `kill_at` one v1 worker gets SIGKILL, at `switch_at`
the default version becomes v2 and at `back_at` v1 again. Every request is retried exactly as
textclf.torchserve.rest retries a prediction (textclf.torchserve.rest.retryable, same backoff), so a valid request that
still fails is a lost request. The load generator is one asyncio loop on raw HTTP/1.1, so it leaves
the cores to the server. Writes bench/results/soak.json and soak.md; the server is always stopped.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench import write_results
from bench.loadgen import Connection, LoadError, post
from handlers.checks import check_int
from textclf.core.errors import UserError
from textclf.core.options import option, run
from textclf.torchserve import properties, server, temporary
from textclf.torchserve.keys import bearer
from textclf.torchserve.rest import Backoff, TorchServeClient, retryable

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
NAME = "soak"
V1_LABELS, V2_LABELS = ("negative", "positive"), ("negative", "neutral", "positive")
REQUEST_TIMEOUT_S = 60.0


@dataclass
class SoakConfig:
    """Soak: a steady mixed load on two workers while a worker is killed and the default version switches."""

    duration_s: float = option("seconds of measured load", 60.0, flag="duration")
    concurrency: int = option("keep-alive connections sending back to back", 32)
    kill_at_s: float = option("second at which one v1 worker gets SIGKILL", 20.0, flag="kill_at")
    switch_at_s: float = option("second at which v2 becomes the default", 40.0, flag="switch_at")
    back_at_s: float | None = option("second at which v1 is the default again; negative: stay on v2", 50.0,
                                        flag="back_at")
    invalid_fraction: float = option("share of invalid requests", 0.1)
    warmup_s: float = option("seconds of the same load first, unmeasured (RSS 'before' is taken after it)", 5.0,
                             flag="warmup")
    workers: int = option("workers per version", 2)
    bundle: Path | None = option("an export bundle to serve (default: a tiny random model built on the spot)", None)
    out_dir: Path = option("where soak.json and soak.md go", RESULTS)
    seed: int = option("seed of the request mix", 0)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        if self.back_at_s is not None and self.back_at_s < 0:
            self.back_at_s = None
        if self.bundle is not None and not Path(self.bundle).is_dir():
            raise UserError(f"--bundle {self.bundle}: not a directory (an export bundle, see `make export`)")
        check_int("--concurrency", self.concurrency, 1, error=UserError)
        check_int("--workers", self.workers, 1, error=UserError)
        if self.warmup_s < 0 or not 0 <= self.invalid_fraction <= 1:
            raise UserError("--warmup must be >= 0 and --invalid-fraction within 0..1")
        times = [self.kill_at_s, self.switch_at_s] + ([self.back_at_s] if self.back_at_s is not None else [])
        if not (0 < times[0] and times == sorted(times) and times[-1] < self.duration_s):
            raise UserError("need 0 < --kill-at < --switch-at [< --back-at] < --duration")


# ---- the request mix ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str
    body: bytes
    content_type: str = "application/json"
    status: int = 200  # what a correct server answers
    version: str | None = None
    texts: int = 1  # valid: predictions expected; shape "one" (dict), "list" or "predictions"
    shape: str = "one"


VALID = [
    Kind("text", b'{"text": "the delivery was fast and the support friendly"}'),
    Kind("text-top1", b'{"text": "not worth the money", "top_k": 1}'),
    Kind("texts", json.dumps({"texts": ["great", "awful", "it is fine I guess", "refund please"]}).encode(), texts=4,
         shape="list"),
    Kind("instances", b'{"instances": ["lovely", {"text": "broken on arrival"}]}', texts=2, shape="predictions"),
    Kind("plain", "plain text body \U0001F600".encode(), "text/plain; charset=utf-8"),
]
INVALID = [
    Kind("bad-json", b'{"text": ', status=400),
    Kind("text-number", b'{"text": 5}', status=400),
    Kind("empty-texts", b'{"texts": []}', status=400),
    Kind("top-k-zero", b'{"text": "a", "top_k": 0}', status=400),
    Kind("unknown-field", b'{"txt": "a"}', status=400),
    Kind("bad-utf8", b'{"text": "\xff"}', status=400),
    Kind("too-many-texts", json.dumps({"texts": ["x"] * 65}).encode(), status=413),
    Kind("unknown-version", b'{"text": "a"}', status=404, version="9.9"),
]


def check(kind: Kind, status: int | None, body: bytes) -> bool:
    """The answer a correct server gives `kind`: its status, and a prediction or an error body."""
    if status != kind.status:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    if kind.status != 200:
        return isinstance(answer, dict) and bool(answer.get("error") or answer.get("message"))
    predictions = {"one": lambda a: [a], "list": lambda a: a, "predictions": lambda a: a["predictions"]}[kind.shape]
    try:
        found = predictions(answer)
        return len(found) == kind.texts and all(p["label"] in p["scores"] for p in found)
    except (KeyError, TypeError):
        return False


def http_request(kind: Kind, host: str, key: str) -> bytes:
    path = f"/predictions/{NAME}" + (f"/{kind.version}" if kind.version else "")
    return post(path, host, {**bearer(key), "Content-Type": kind.content_type}, kind.body)


# ---- the run -------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    started: float = field(default_factory=time.perf_counter)
    outcomes: list = field(default_factory=list)  # (t, kind name, valid, correct, latency s, attempts)
    retries: Counter = field(default_factory=Counter)  # by cause
    wrong: list = field(default_factory=list)  # first few wrong answers
    labels: Counter = field(default_factory=Counter)


async def client(conn: Connection, raw: dict, rng: random.Random, cfg: SoakConfig, tally: Tally, stop: dict):
    while time.perf_counter() < stop["at"]:
        kind = rng.choice(INVALID) if rng.random() < cfg.invalid_fraction else rng.choice(VALID)
        t0, attempt, delays = time.perf_counter(), 0, Backoff().delays()  # TorchServeClient's schedule
        while True:
            try:
                status, body = await asyncio.wait_for(conn.exchange(raw[kind.name]), REQUEST_TIMEOUT_S)
                cause = str(status) if retryable(status, body) else None
            except LoadError as e:
                status, body, cause = None, str(e).encode(), "connection"
            except asyncio.TimeoutError:  # like the client: a request that hung is not sent again
                conn.close()
                status, body, cause = None, b"timed out", None
            delay = next(delays, None) if cause is not None else None
            if delay is None:
                break
            tally.retries[cause] += 1
            await asyncio.sleep(delay)
            attempt += 1
        correct = check(kind, status, body)
        now = time.perf_counter()
        tally.outcomes.append((now - tally.started, kind.name, kind in VALID, correct, now - t0, attempt + 1))
        if correct and kind in VALID and kind.shape == "one":
            tally.labels[",".join(sorted(json.loads(body)["scores"]))] += 1
        if not correct and len(tally.wrong) < 10:
            tally.wrong.append({"kind": kind.name, "status": status, "body": body[:200].decode("utf-8", "replace")})


def rss_mb(cfg: properties.ServerConfig) -> dict[str, float]:
    procs, out = server.processes(server.running_pid(cfg)), {}
    for part, items in (("java", procs["frontend"]), ("workers", procs["workers"])):
        total = 0
        for proc in items:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        out[part] = round(total / 2 ** 20, 1)
    out["total"] = round(out["java"] + out["workers"], 1)
    return out


def worker_pids(rest: TorchServeClient) -> dict[str, list[int]]:
    return {d["modelVersion"]: sorted(w["pid"] for w in d["workers"]) for d in rest.describe(NAME, "all")}


async def events(cfg: SoakConfig, rest: TorchServeClient, tally: Tally, log: list) -> None:
    def note(what: str) -> None:
        log.append({"t_s": round(time.perf_counter() - tally.started, 2), "event": what})
        logger.info("%5.1fs %s", time.perf_counter() - tally.started, what)

    async def sleep_until(t: float) -> None:
        await asyncio.sleep(max(0.0, tally.started + t - time.perf_counter()))

    await sleep_until(cfg.kill_at_s)
    victim = (await asyncio.to_thread(worker_pids, rest))["1.0"][0]
    os.kill(victim, signal.SIGKILL)
    note(f"SIGKILL v1 worker pid {victim}")
    while True:
        (d,) = await asyncio.to_thread(rest.describe, NAME, "1.0")
        ready = [w["pid"] for w in d["workers"] if w["status"] == "READY"]
        if len(ready) == cfg.workers and victim not in ready:
            note(f"v1 has {cfg.workers} READY workers again (pids {sorted(ready)})")
            break
        await asyncio.sleep(0.5)
    for t, version in ((cfg.switch_at_s, "2.0"), (cfg.back_at_s, "1.0")):
        if t is not None:
            await sleep_until(t)
            await asyncio.to_thread(rest.set_default, NAME, version)
            note(f"set-default {version}")


async def load(cfg, ep: properties.Endpoints, key: str, duration: float | None, side=None) -> Tally:
    """`concurrency` clients for `duration` seconds, with `side(tally)` (the events) running beside them.
    Without a duration the load stops when `side` returns (bench.switch_stress's cycles)."""
    host, port = ep.inference_url.split("//", 1)[1].rsplit(":", 1)
    raw = {k.name: http_request(k, f"{host}:{port}", key) for k in VALID + INVALID}
    tally, rng = Tally(), random.Random(cfg.seed)
    stop = {"at": tally.started + duration if duration is not None else float("inf")}

    async def run_side():
        await side(tally)
        if duration is None:
            stop["at"] = time.perf_counter()

    conns = [Connection(host, int(port)) for _ in range(cfg.concurrency)]
    tasks = [client(c, raw, random.Random(rng.random()), cfg, tally, stop) for c in conns]
    if side is not None:
        tasks.append(run_side())
    await asyncio.gather(*tasks)
    for c in conns:
        c.close()
    return tally


def percentile(values: list, q: float) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1) if len(values) > 1 \
        else round(values[0] * 1000, 1)


def summarize(cfg: SoakConfig, tally: Tally, log: list, rss: dict, restarts: int, cpu_s: float) -> dict:
    valid = [o for o in tally.outcomes if o[2]]
    invalid = [o for o in tally.outcomes if not o[2]]
    latencies = [o[4] for o in valid]
    buckets = Counter(int(o[0] // 10) * 10 for o in tally.outcomes)
    growth = {k: round(100 * (rss["after"][k] - rss["before"][k]) / rss["before"][k], 1) for k in rss["before"]
              if rss["before"][k]}
    return {
        "config": {k: (os.path.relpath(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "requests_sent": len(tally.outcomes),
        "attempts_sent": sum(o[5] for o in tally.outcomes),
        "throughput_rps": round(len(tally.outcomes) / cfg.duration_s, 1),
        "valid": {"sent": len(valid), "failed": sum(not o[3] for o in valid)},
        "invalid": {"sent": len(invalid), "right_4xx": sum(o[3] for o in invalid),
                    "right_4xx_pct": round(100 * sum(o[3] for o in invalid) / len(invalid), 2) if invalid else None,
                    "by_kind": dict(Counter(o[1] for o in invalid))},
        "latency_ms": {"valid_p50": percentile(latencies, 50), "valid_p99": percentile(latencies, 99),
                       "valid_max": round(max(latencies) * 1000, 1) if latencies else None},
        "retries": dict(tally.retries),
        "worker_restarts": restarts,
        "answers_by_labels": dict(tally.labels),
        "rss_mb": rss, "rss_growth_pct": growth,
        "requests_per_10s": {f"{t}-{t + 10}s": n for t, n in sorted(buckets.items())},
        "events": log,
        "wrong_answers": tally.wrong,
        "load_generator_cpu_s": round(cpu_s, 1),
        "host": {"cpus": os.cpu_count()},
    }


def markdown(r: dict) -> str:
    c, lat, rss, growth = r["config"], r["latency_ms"], r["rss_mb"], r["rss_growth_pct"]
    rows = [
        ("requests sent (attempts incl. retries)", f"{r['requests_sent']} ({r['attempts_sent']})", ""),
        ("throughput", f"{r['throughput_rps']} req/s", ""),
        ("valid requests failed after the client's retry", f"{r['valid']['failed']} of {r['valid']['sent']}", "0"),
        ("invalid requests answered with the right 4xx",
         f"{r['invalid']['right_4xx']} of {r['invalid']['sent']} ({r['invalid']['right_4xx_pct']}%)", "100%"),
        ("latency p50 / p99 / max (valid, incl. retries)",
         f"{lat['valid_p50']} / {lat['valid_p99']} / {lat['valid_max']} ms", ""),
        ("retries by cause", ", ".join(f"{k}: {v}" for k, v in sorted(r["retries"].items())) or "none", ""),
        ("worker restarts", str(r["worker_restarts"]), "1 (the killed one)"),
        ("server RSS before -> after (java + workers)",
         f"{rss['before']['total']} -> {rss['after']['total']} MB ({growth.get('total'):+} %)", "< +10 %"),
        ("  of which java", f"{rss['before']['java']} -> {rss['after']['java']} MB ({growth.get('java'):+} %)", ""),
        ("load generator CPU", f"{r['load_generator_cpu_s']} s over {c['duration_s']:.0f} s", ""),
    ]
    by_kind = ", ".join(f"{k}: {v}" for k, v in sorted(r["invalid"]["by_kind"].items()))
    lines = [f"# Soak: {c['duration_s']:.0f} s, concurrency {c['concurrency']}, {c['workers']} workers per version, "
             f"{c['invalid_fraction']:.0%} invalid", "",
             f"Model: {c['bundle'] or 'tiny random RoBERTa (training/tiny.py)'}; host: {r['host']['cpus']} CPUs. "
             f"Events: " + "; ".join(f"{e['t_s']} s {e['event']}" for e in r["events"]) + ".", "",
             "| metric | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {t} |" for a, b, t in rows]
    lines += ["", "Requests per 10 s: " + ", ".join(f"{k}: {v}" for k, v in r["requests_per_10s"].items()),
              "", "Invalid requests by kind: " + by_kind]
    if r["wrong_answers"]:
        lines += ["", "First wrong answers:", ""] + [f"- {json.dumps(w)}" for w in r["wrong_answers"]]
    return "\n".join(lines) + "\n"


def build_store(cfg: SoakConfig, store: Path, work: Path) -> None:
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    for version, labels in (("1.0", V1_LABELS), ("2.0", V2_LABELS)):
        if cfg.bundle is not None:
            bundle = Path(cfg.bundle)
        else:
            from training.tiny import make_tiny_bundle

            bundle = make_tiny_bundle(work / f"bundle-{version}", labels=labels)
        build_archive(ArchiveConfig(bundle=bundle, name=NAME, version=version, store=store, batch_size=16,
                                    max_batch_delay=5, min_workers=cfg.workers, max_workers=cfg.workers))


def main(cfg: SoakConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as work, temporary.temporary_server(prefix="soak-") as running:
        build_store(cfg, running.store, Path(work))
        ep, rest, scfg = running.endpoints, running.client(), running.cfg
        for version in ("1.0", "2.0"):
            rest.register(NAME, f"{NAME}-{version}.mar", initial_workers=cfg.workers, batch_size=16, max_batch_delay=5)
        rest.set_default(NAME, "1.0")
        key = running.key("inference")
        logger.info("warm-up %.0fs", cfg.warmup_s)
        asyncio.run(load(cfg, ep, key, cfg.warmup_s))
        before_pids, rss = worker_pids(rest), {"before": rss_mb(scfg)}
        logger.info("soak %.0fs at concurrency %d; RSS before %s MB", cfg.duration_s, cfg.concurrency, rss["before"])
        log, cpu0 = [], resource.getrusage(resource.RUSAGE_SELF)
        tally = asyncio.run(load(cfg, ep, key, cfg.duration_s, lambda t: events(cfg, rest, t, log)))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(2)  # let the last batches finish before measuring memory
        rss["after"] = rss_mb(scfg)
        after_pids = worker_pids(rest)
        restarts = sum(len(set(after_pids.get(v, [])) - set(p)) for v, p in before_pids.items())
        cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        result = summarize(cfg, tally, log, rss, restarts, cpu_s)
    write_results(cfg.out_dir, "soak", result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(run(main, SoakConfig, prog="python -m bench.soak", show=lambda result: markdown(result).rstrip()))
