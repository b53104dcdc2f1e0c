"""Long-text policies measured: which part of a long support email the model should read, and what it costs.

    python -m bench.long_text_bench [--data-root ../shared/data] [--runs runs/bench-oos] [--rows 1200] [--seed 13]

The banking77 run of the out-of-scope benchmark (MiniLM-L6, max_length 128; trained as bench.out_of_scope_bench
trains it when missing) reads a seeded long-ticket set (bench/long_tickets.py: each test query inside 150-400 tokens
of email text, with a quoted earlier message on another topic, the query at the start, in the middle or at the
end) under every candidate policy of handlers/long_texts.py: truncate, head+tail with a quarter or half of the
budget from the start, and windows at a stride of max_length/2 (mean, max or the most confident window's logits)
and max_length/4 (max). For each: accuracy overall and by position, how often the answer is the quoted
message's intent, accuracy on banking77's own (short) test split, which must not drop, windows per text, and the
cost per text (in-process, batches of BATCH, --threads torch threads, tokenization included; the best of REPEATS
passes over the first COST_TEXTS tickets, as other processes share the CPU). Every figure goes through
training.report.predict_outputs(policy=...), the code training evaluates with; answers are as served (the run's
temperature). References beside the policies: the same queries alone, and the tickets with their quoted thread
removed (bench.long_tickets.without_quotes, what a sender could strip). The share of long tickets the run's
out-of-scope detector turns away is measured for truncate, head+tail and windows, with serving's rule for windows
(the max of the per-window in_scope scores) and training's (the detector on the mean of the windows' features),
and the accuracy of answering with the window the detector finds most in scope (features, not a served policy).
Writes bench/results/long_texts.{json,md}. Run it alone: timings are measured.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import write_results
from bench.long_tickets import EMAIL_TOKENS, POSITIONS, banking77_test, long_tickets, token_counter, without_quotes
from bench.multilabel_bench import machine
from bench.out_of_scope_bench import OutOfScopeBenchConfig, Scored, ensure_run, pct, table
from handlers.batching import split_outputs
from handlers.long_texts import policy_from_section, reduce_rows
from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import command_line, option, run
from training.export import read_detector
from training.report import predict_outputs

PROG = "python -m bench.long_text_bench"
RESULTS = Path(__file__).parent / "results"
BATCH = 32  # texts per predict_outputs batch: one forward pass for all their windows
COST_TEXTS, REPEATS = 256, 3
log = logging.getLogger(__name__)
RUN = "banking77"


@dataclass
class LongTextBenchConfig:
    """Measure the long-text policies on long support tickets built from banking77's test split."""

    data_root: Path = option("folder holding the datasets", paths.ROOT.parent / "shared" / "data")
    runs: Path = option("the out-of-scope benchmark's runs folder (its banking77 run is trained when missing)",
                        paths.ROOT / "runs" / "bench-oos")
    rows: int = option("long tickets to build (a third at each position)", 1200)
    seed: int = option("seed of the long-ticket set", 13)
    threads: int = option("torch threads: timings are per text at this count", 1)
    out: Path = option("results file stem", RESULTS / "long_texts")

    def __post_init__(self):
        if self.rows < len(POSITIONS):
            raise UserError(f"--rows must be at least {len(POSITIONS)}, got {self.rows}")
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")


def candidates(max_length: int) -> dict[str, dict]:
    """name -> the card section of every policy measured."""
    half, quarter = max_length // 2, max_length // 4
    return {
        "truncate": {"policy": "truncate"},
        "head+tail, head 1/4": {"policy": "head+tail", "head": 0.25},
        "head+tail, head 1/2": {"policy": "head+tail", "head": 0.5},
        f"windows {half}, mean": {"policy": "windows", "stride": half, "aggregate": "mean"},
        f"windows {half}, max": {"policy": "windows", "stride": half, "aggregate": "max"},
        f"windows {half}, confident": {"policy": "windows", "stride": half, "aggregate": "confident"},
        f"windows {quarter}, max": {"policy": "windows", "stride": quarter, "aggregate": "max"},
    }


def scores(predicted: np.ndarray, tickets: pd.DataFrame) -> dict:
    """Accuracy overall and by position, and the share answered with the quoted message's intent."""
    correct = predicted == tickets["category"].to_numpy()
    positions = tickets["position"].to_numpy()
    return {"accuracy": float(correct.mean()),
            "by_position": {p: float(correct[positions == p].mean()) for p in POSITIONS if (positions == p).any()},
            "quoted_intent": float((predicted == tickets["quoted_category"].to_numpy()).mean())}


def answers(scored: Scored, texts: list[str], policy) -> tuple[np.ndarray, float]:
    """Predicted label names as served, and the seconds they took."""
    started = time.perf_counter()
    probs, _ = predict_outputs(scored.forward, scored.tokenizer, texts, scored.config.max_length, BATCH,
                               activation=scored.problem.probabilities, policy=policy)
    return np.asarray(scored.labels, dtype=object)[probs.argmax(axis=1)], time.perf_counter() - started


def measure(scored: Scored, policy, tickets: pd.DataFrame, short: pd.DataFrame) -> dict:
    texts = tickets["text"].tolist()
    predicted, _ = answers(scored, texts, policy)
    seconds = min(answers(scored, texts[:COST_TEXTS], policy)[1] for _ in range(REPEATS))
    timed = min(COST_TEXTS, len(texts))
    windows = [w for i in range(0, len(texts), BATCH)
               for w in policy.encode(scored.tokenizer, texts[i: i + BATCH], scored.config.max_length).windows]
    short_predicted, _ = answers(scored, short["text"].tolist(), policy)
    result = {"section": policy.section(), **scores(predicted, tickets),
              "short_accuracy": float((short_predicted == short["category"].to_numpy()).mean()),
              "windows_per_text": float(np.mean(windows)), "windows_max": int(np.max(windows)),
              "ms_per_text": 1000 * seconds / timed, "texts_per_second": timed / seconds}
    log.info("%s: long tickets %.1f%%, short %.1f%%, %.1f ms/text", policy.section(), 100 * result["accuracy"],
             100 * result["short_accuracy"], result["ms_per_text"])
    return result


def turned_away(scored: Scored, detector, policy, tickets: pd.DataFrame) -> dict:
    """The share of tickets below the detector's threshold: serving's rule (a text is as in scope as its most
    in-scope window) and training's (the detector on the text's mean features and aggregated answer); and the
    scores of answering each ticket with its most in-scope window's label."""
    texts, served, trained, picked = tickets["text"].tolist(), [], [], []
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            enc = policy.encode(scored.tokenizer, texts[i: i + BATCH], scored.config.max_length)
            logits, features = split_outputs(scored.forward(enc.input_ids, enc.attention_mask))
            n = len(enc.windows)
            rows = torch.as_tensor(detector.in_scope(scored.problem.probabilities(logits).numpy(), features.numpy()))
            best = reduce_rows(rows, enc.owners, n, "max")
            served += best.tolist()
            picked += [int(logits[(enc.owners == t) & (rows == best[t])][0].argmax()) for t in range(n)]
            probs = scored.problem.probabilities(policy.aggregate(logits, enc.owners, n))
            trained += detector.in_scope(probs.numpy(), reduce_rows(features, enc.owners, n, "mean").numpy()).tolist()
    most_in_scope = scores(np.asarray(scored.labels, dtype=object)[picked], tickets)
    return {"serving": float(np.mean(np.asarray(served) < detector.threshold)),
            "training": float(np.mean(np.asarray(trained) < detector.threshold)), "most_in_scope_window": most_in_scope}


def best_aggregate(policies: dict) -> str:
    """The windows row with the best long-ticket accuracy (on a tie, the first listed)."""
    rows = {name: r for name, r in policies.items() if r["section"]["policy"] == "windows"}
    return max(rows, key=lambda name: rows[name]["accuracy"])


# ---------------------------------------------------------------- report

def markdown(results: dict) -> str:
    m, s = results["machine"], results["set"]
    lines = ["# Long-text policies on long support tickets", "",
             f"`{results['command']}` on {m['cpu_class']} ({m['cpus']} CPUs, {results['torch_threads']} torch thread"
             f"{'s' if results['torch_threads'] != 1 else ''}), {results['date']}; load average at the end "
             f"{results['load_average_end'][0]:.1f}. Guide: docs/long-texts.md.", "",
             f"Model: the out-of-scope benchmark's banking77 run ({results['model']}, max_length {results['max_length']}, "
             f"as served: temperature {results['temperature']:.2f}). Set: {s['rows']} banking77 test queries inside "
             f"{s['email_tokens'][0]}-{s['email_tokens'][1]} tokens of email text each (bench/long_tickets.py, seed "
             f"{s['seed']}; whole texts {s['text_tokens']['min']}-{s['text_tokens']['max']} tokens, median "
             f"{s['text_tokens']['median']}), the query at the start, in the middle or at the end, a quoted earlier "
             f"message on another intent in every one."]
    lines += table("Accuracy and cost per policy",
                   ["policy", "long tickets", "start", "middle", "end", "answered the quoted intent",
                    f"banking77 test ({results['short_texts']} short)", "windows / text (max)", "ms / text",
                    "texts / s"],
                   [[name, pct(r["accuracy"]), *(pct(r["by_position"].get(p)) for p in POSITIONS),
                     pct(r["quoted_intent"]), pct(r["short_accuracy"]),
                     f"{r['windows_per_text']:.2f} ({r['windows_max']})", f"{r['ms_per_text']:.1f}",
                     f"{r['texts_per_second']:.1f}"] for name, r in results["policies"].items()])
    lines += ["", f"Best windows aggregation here: {results['best_windows']}. Costs are in-process (eager fp32, batches "
              f"of {BATCH}, tokenization included; the best of {REPEATS} passes over {results['cost_texts']} tickets), "
              "on this CPU at this thread count: compare rows, not machines."]
    references = results["references"]
    lines += table("References (not policies)", ["", "long tickets", *POSITIONS, "answered the quoted intent"],
                   [[name, pct(r["accuracy"]), *(pct(r["by_position"].get(p)) for p in POSITIONS),
                     pct(r["quoted_intent"])] for name, r in references.items()])
    if results.get("out_of_scope"):
        lines += table(f"Long tickets turned away by the run's out-of-scope detector ({results['detector']})",
                       ["policy", "serving's rule (max of the windows' in_scope)", "training's rule (mean features)"],
                       [[name, pct(r["serving"]), pct(r["training"])] for name, r in results["out_of_scope"].items()])
    return "\n".join(lines) + "\n"


def main(config: LongTextBenchConfig) -> dict:
    if not (config.data_root / "banking77" / "test.csv").is_file():
        raise UserError(f"{config.data_root / 'banking77' / 'test.csv'} not found: the benchmark reads ../shared/data "
                        "(pass --data-root)")
    torch.set_num_threads(config.threads)
    rd = ensure_run(OutOfScopeBenchConfig(data_root=config.data_root, runs=config.runs), RUN)
    scored = Scored(rd)
    count = token_counter(str(rd.model_dir))
    short = banking77_test(config.data_root)
    tickets = pd.DataFrame([asdict(t) for t in long_tickets(short, config.rows, config.seed, count)])
    lengths = np.array([count(t) for t in tickets["text"]])
    max_length = scored.config.max_length
    policies = {name: measure(scored, policy_from_section(section, scored.problem.name, "bench"), tickets, short)
                for name, section in candidates(max_length).items()}
    best = best_aggregate(policies)
    references = {"the queries alone": scores(answers(scored, tickets["query"].tolist(), None)[0], tickets)}
    unquoted = tickets["text"].map(without_quotes).tolist()
    for name in ("truncate", best):
        policy = policy_from_section(policies[name]["section"], scored.problem.name, "bench")
        references[f"{name}, quoted thread removed"] = scores(answers(scored, unquoted, policy)[0], tickets)
    detector = read_detector(rd.path, rd.read_run())
    scope = {}
    if detector is not None:
        for name in ("truncate", "head+tail, head 1/4", best):
            policy = policy_from_section(policies[name]["section"], scored.problem.name, "bench")
            scope[name] = turned_away(scored, detector, policy, tickets)
        references[f"{best}, answered by the most in-scope window"] = scope[best].pop("most_in_scope_window")
        for r in scope.values():
            r.pop("most_in_scope_window", None)
    results = {
        "command": command_line(PROG, config), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg(),
        "model": scored.config.model, "max_length": max_length, "temperature": scored.problem.temperature,
        "set": {"rows": len(tickets), "seed": config.seed, "email_tokens": list(EMAIL_TOKENS),
                "positions": tickets["position"].value_counts().to_dict(),
                "text_tokens": {"min": int(lengths.min()), "median": int(np.median(lengths)), "max": int(lengths.max())}},
        "short_texts": len(short), "cost_texts": min(COST_TEXTS, len(tickets)), "policies": policies,
        "best_windows": best, "references": references,
        **({"detector": detector.kind, "out_of_scope": scope} if detector is not None else {}),
    }
    write_results(config.out.parent, config.out.name, results, markdown(results))
    return results


def command(argv=None, prog=PROG) -> int:
    return run(main, LongTextBenchConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
