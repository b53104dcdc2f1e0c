"""Version switches under load lose nothing: many roll-forward / roll-back cycles while clients keep asking.

    python -m bench.switch_stress [--cycles 200] [--concurrency 16]   (= make bench-switch)

One temporary TorchServe (free loopback ports, token authorization on) serves v1 of a tiny random
model. `concurrency` keep-alive connections send valid requests to the model's default version back
to back (bench.soak's load generator and its request mix, retried exactly as textclf.torchserve.rest retries a
prediction) while each cycle registers v2, makes it the default, keeps it there for `dwell`, makes v1
the default again and unregisters v2 (TorchServeClient.unregister drains it first), i.e. a promotion
and a rollback. A valid request that still fails, or gets no answer within 60 s, is a lost request;
the target is 0 over 200 cycles. Writes bench/results/switch_stress.{json,md}; the server is always
stopped. tests/live/test_lifecycle.py runs the same loop for a few cycles.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import soak, write_results
from handlers.checks import check_int
from textclf.core.errors import UserError
from textclf.core.options import option, run
from textclf.torchserve import temporary

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"


@dataclass
class StressConfig:
    """Register, promote, roll back and unregister a version many times under load; count lost requests."""

    cycles: int = option("switch cycles (register v2, default v2, default v1, unregister v2)", 200)
    concurrency: int = option("keep-alive connections sending back to back", 16)
    dwell_s: float = option("seconds v2 stays the default in each cycle", 0.5, flag="dwell")
    invalid_fraction: float = option("share of invalid requests in the mix (they must keep their 4xx)", 0.0)
    seed: int = option("seed of the request mix", 0)
    out_dir: Path = option("where switch_stress.json and .md go", RESULTS)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        check_int("--cycles", self.cycles, 1, error=UserError)
        check_int("--concurrency", self.concurrency, 1, error=UserError)


async def cycles(cfg: StressConfig, rest, tally: soak.Tally, log: list) -> None:
    def note(what: str) -> None:
        log.append({"t_s": round(time.perf_counter() - tally.started, 2), "event": what})

    for i in range(cfg.cycles):
        await asyncio.to_thread(rest.register, soak.NAME, f"{soak.NAME}-2.0.mar", initial_workers=1, batch_size=16,
                                max_batch_delay=5)
        await asyncio.to_thread(rest.set_default, soak.NAME, "2.0")
        await asyncio.sleep(cfg.dwell_s)
        await asyncio.to_thread(rest.set_default, soak.NAME, "1.0")
        await asyncio.to_thread(rest.unregister, soak.NAME, "2.0")
        if i % 10 == 0 or i == cfg.cycles - 1:
            lost = sum(o[2] and not o[3] for o in tally.outcomes)
            note(f"cycle {i + 1}/{cfg.cycles}: {len(tally.outcomes)} requests answered so far, {lost} lost")
            logger.info("%s", log[-1]["event"])


def summarize(cfg: StressConfig, tally: soak.Tally, log: list, seconds: float) -> dict:
    valid = [o for o in tally.outcomes if o[2]]
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "cycles": cfg.cycles, "seconds": round(seconds, 1),
        "requests": len(tally.outcomes), "valid": len(valid), "lost": sum(not o[3] for o in valid),
        "invalid_wrong": sum(not o[2] and not o[3] for o in tally.outcomes),
        "retries": dict(tally.retries), "answers_by_labels": dict(tally.labels),
        "latency_ms": {"p50": soak.percentile([o[4] for o in valid], 50),
                       "p99": soak.percentile([o[4] for o in valid], 99),
                       "max": round(max(o[4] for o in valid) * 1000, 1) if valid else None},
        "attempts": dict(Counter(o[5] for o in valid)),
        "wrong_answers": tally.wrong, "events": log,
        "host": {"cpus": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


def markdown(r: dict) -> str:
    lat = r["latency_ms"]
    lines = [f"# Version switches under load: {r['cycles']} cycles, concurrency {r['config']['concurrency']}", "",
             f"`python -m bench.switch_stress --cycles {r['cycles']}`, {r['host']['finished']}, "
             f"{r['host']['cpus']} CPUs, tiny random RoBERTa. Each cycle: register v2, default v2 for "
             f"{r['config']['dwell_s']} s, default v1, unregister v2 (drained first).", "",
             "| metric | value | target |", "|---|---|---|",
             f"| valid requests lost (failed after the client's retries, or unanswered in 60 s) | {r['lost']} of "
             f"{r['valid']} | 0 |",
             f"| time for {r['cycles']} cycles | {r['seconds']:.0f} s | |",
             f"| retries by cause | {', '.join(f'{k}: {v}' for k, v in sorted(r['retries'].items())) or 'none'} | |",
             f"| latency p50 / p99 / max | {lat['p50']} / {lat['p99']} / {lat['max']} ms | |",
             f"| answers by label set (v1: 2 labels, v2: 3) | "
             f"{', '.join(f'{k}: {v}' for k, v in sorted(r['answers_by_labels'].items()))} | both seen |"]
    if r["wrong_answers"]:
        lines += ["", "First wrong answers:", ""] + [f"- {json.dumps(w)}" for w in r["wrong_answers"]]
    return "\n".join(lines) + "\n"


def stress(cfg: StressConfig) -> dict:
    """Run the loop on a temporary server; the summary (nothing written)."""
    with tempfile.TemporaryDirectory(prefix="switch-") as work, temporary.temporary_server(prefix="switch-") as running:
        soak.build_store(soak.SoakConfig(workers=1), running.store, Path(work))
        rest = running.client()
        rest.register(soak.NAME, f"{soak.NAME}-1.0.mar", initial_workers=1, batch_size=16, max_batch_delay=5)
        log, started = [], time.perf_counter()
        tally = asyncio.run(soak.load(cfg, running.endpoints, running.key("inference"), None,
                                      lambda t: cycles(cfg, rest, t, log)))
        result = summarize(cfg, tally, log, time.perf_counter() - started)
        if result["lost"]:  # the server's side of the story, before the temporary state dir goes
            kept = cfg.out_dir / "switch_stress-logs"
            kept.mkdir(parents=True, exist_ok=True)
            for f in (running.cfg.state_dir / "logs").glob("*.log"):
                shutil.copy(f, kept / f.name)
            result["logs_kept"] = str(kept)
        return result


def main(cfg: StressConfig) -> dict:
    result = stress(cfg)
    write_results(cfg.out_dir, "switch_stress", result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(run(main, StressConfig, prog="python -m bench.switch_stress", show=lambda r: markdown(r).rstrip()))
