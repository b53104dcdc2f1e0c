"""Are the explanations faithful, and what do they cost? Occlusion explanations (handlers/explanations.py) measured
on fine-tuned models.

    python -m bench.explain_bench [--data-root ../shared/data] [--runs runs/bench-oos] [--texts 300]

Faithfulness, on the out-of-scope benchmark's rt-polarity and banking77 runs (trained as bench.out_of_scope_bench
trains them when missing), scored by the eager model as served (softmax at the run's fitted temperature): for a
seeded sample of --texts test texts of at least 4 words, explain the predicted label; then remove each text's
--words highest-weighted words, as many random words (seeded) and the as many lowest-weighted, all at once
(handlers.explanations.without, the occlusion of the explanation itself), and measure the drop of the predicted
label's probability. Explanations are faithful when removing the words they rank highest hurts the answer more
than removing random words for at least 80% of texts, and more than removing the lowest-ranked (TARGET_SHARE).
A random pick can be the top pick itself (a 4-word text: 1 time in 4), which counts as not more: the ties are
reported.

Throughput: texts explained per second, --batch texts per explain call as a client would send them, on the
rt-polarity run (MiniLM-L6, 6 layers) and on the same model cut to its first 3 layers (training.distill's
student builder; untrained, for speed only), interleaved, the best of --repeats passes kept.
Writes bench/results/explanations.{json,md}. Run it alone: timings are measured.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench import write_results
from bench.multilabel_bench import machine
from bench.out_of_scope_bench import OutOfScopeBenchConfig, ensure_run, pct, table
from handlers.answers import SingleLabelAnswers
from handlers.checks import check_int
from handlers.explanations import explain, without, words_of
from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import command_line, option, run
from training.distill import student_from_layers
from training.export import run_problem
from training.report import predict_probs
from training.rundir import RunDir

log = logging.getLogger(__name__)
PROG = "python -m bench.explain_bench"
RESULTS = Path(__file__).parent / "results"
DATASETS = ("rt-polarity", "banking77")  # the out-of-scope benchmark's runs of them
SPEED_RUN = "rt-polarity"
FIRST_LAYERS = [0, 1, 2]  # the 3-layer model of the throughput table
MIN_WORDS = 4  # removing 3 words of a shorter text leaves nothing to compare
PICKS = ("top", "random", "bottom")
TARGET_SHARE = 0.80
SCORING_BATCH = 64  # texts per forward pass inside one probabilities call (predict_probs sorts them by length)
EXPLAIN_CHUNK = 25  # texts per explain call while measuring faithfulness: a progress line each


@dataclass
class ExplainBenchConfig:
    """Measure the faithfulness and the throughput of occlusion explanations."""

    data_root: Path = option("folder holding the datasets", paths.ROOT.parent / "shared" / "data")
    runs: Path = option("the out-of-scope benchmark's runs (trained here when missing)", paths.ROOT / "runs" / "bench-oos")
    work: Path = option("folder for the 3-layer model", paths.ROOT / "runs" / "explain-bench")
    texts: int = option("test texts per dataset (a seeded sample of those with at least 4 words)", 300)
    words: int = option("words removed per text: the top, random and bottom picks", 3)
    seed: int = option("seed of the sample and of the random picks", 13)
    batch: int = option("texts per explain call when timing", 8)
    speed_texts: int = option("texts explained per timed pass (rt-polarity's sample)", 160)
    repeats: int = option("timed passes per model, interleaved; the fastest is kept", 3)
    threads: int | None = option("torch threads (default: torch's own, which OMP_NUM_THREADS sets)", None)
    out: Path = option("results file stem", RESULTS / "explanations")

    def __post_init__(self):
        for name in ("texts", "words", "batch", "speed_texts", "repeats"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1, error=UserError)
        check_int("--threads", self.threads, 1, optional=True, error=UserError)


# ---------------------------------------------------------------- pure parts

def sample_texts(texts: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample of n texts (all of them when fewer) among those with at least MIN_WORDS words."""
    eligible = [t for t in dict.fromkeys(texts) if len(words_of(t)) >= MIN_WORDS]
    return random.Random(seed).sample(eligible, min(n, len(eligible)))


def picks(weights: list[float], k: int, rng: random.Random) -> dict[str, list[int]]:
    """The positions of the k highest weights, k random words and the k lowest weights (ties: the earlier word)."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    return {"top": sorted(order[:k]), "random": sorted(rng.sample(range(len(weights)), k)),
            "bottom": sorted(order[::-1][:k])}


def summary(drops: dict[str, list[float]], same_picks: int) -> dict:
    """The figures of one dataset from the probability drops of each pick, text by text."""
    top, rand, bottom = (np.asarray(drops[p], dtype=np.float64) for p in PICKS)
    out = {"texts": len(top), "top_beats_random": float((top > rand).mean()),
           "top_beats_bottom": float((top > bottom).mean()), "random_pick_was_top_pick": same_picks,
           **{f"mean_drop_{p}": float(np.mean(drops[p])) for p in PICKS}}
    out["target_met"] = out["top_beats_random"] >= TARGET_SHARE and out["top_beats_bottom"] >= TARGET_SHARE
    return out


def misses(drops: dict[str, list[float]], shared: list[bool], words: list[int]) -> dict:
    """The texts where the random pick hurt at least as much as the top pick: how many, how many of them drew one
    of the top words at random, and their length next to every text's (the median number of words)."""
    missed = [i for i, (top, rand) in enumerate(zip(drops["top"], drops["random"], strict=True)) if top <= rand]
    return {"texts": len(missed), "random_shared_a_top_word": sum(shared[i] for i in missed),
            "median_words": float(np.median([words[i] for i in missed])) if missed else None,
            "median_words_all": float(np.median(words))}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Explanations by occlusion: faithfulness and throughput", "",
             f"`{results['command']}` on {m['cpu_class']} ({m['cpus']} CPUs, {m['cpu']}), {results['date']}, "
             f"{results['torch_threads']} torch thread(s), load average {results['load_average_start'][0]:.1f} at the "
             f"start and {results['load_average_end'][0]:.1f} at the end (other work on the host slows the timings "
             "down). Method: bench/explain_bench.py; guide: docs/explanations.md."]
    k = results["words"]
    lines += table(f"Faithfulness: removing each text's {k} highest-weighted words against {k} random and the "
                   f"{k} lowest-weighted (drop of the predicted label's calibrated probability)",
                   ["run", "texts", "mean words", f"top-{k} > random-{k}", f"top-{k} > bottom-{k}",
                    f"mean drop top-{k}", f"random-{k}", f"bottom-{k}", "random pick = top pick", "target"],
                   [[name, str(r["texts"]), f"{r['mean_words']:.1f}", pct(r["top_beats_random"]),
                     pct(r["top_beats_bottom"]), f"{r['mean_drop_top']:+.3f}", f"{r['mean_drop_random']:+.3f}",
                     f"{r['mean_drop_bottom']:+.3f}", str(r["random_pick_was_top_pick"]),
                     "met" if r["target_met"] else "not met"] for name, r in results["faithfulness"].items()])
    for name, r in results["faithfulness"].items():
        miss = r["misses"]
        if miss["texts"]:
            lines += ["", f"{name}: of the {miss['texts']} texts where random-{k} hurt at least as much, "
                      f"{miss['random_shared_a_top_word']} drew one of the top-{k} words at random; their median "
                      f"length is {miss['median_words']:g} words (all texts: {miss['median_words_all']:g})."]
    met = all(r["target_met"] for r in results["faithfulness"].values())
    lines += ["", f"Target (top-{k} removal lowers the predicted label's probability more than random-{k} and more "
              f"than bottom-{k} for at least {TARGET_SHARE:.0%} of texts, on every run): "
              + ("met." if met else "not met.")]
    lines += table(f"Throughput: texts explained per second, {results['batch']} texts per explain call",
                   ["model", "layers", "texts", "mean words", "texts scored per text", "texts/s", "ms per text"],
                   [[name, str(r["layers"]), str(r["texts"]), f"{r['mean_words']:.1f}",
                     f"{r['rows_per_text']:.1f}", f"{r['texts_per_s']:.2f}", f"{1000 / r['texts_per_s']:.0f}"]
                    for name, r in results["throughput"].items()])
    lines += ["", "An explanation scores the text and each of its variants (one word removed): about words + 1 "
              "texts through the model, so its cost is that many predictions."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- models

class Served:
    """A model's calibrated probabilities as served (softmax at the run's fitted temperature), from the eager
    model: explain's `probabilities`."""

    def __init__(self, model_dir: Path, max_length: int, answers: SingleLabelAnswers):
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_length, self.answers = max_length, answers
        self.layers = self.model.config.num_hidden_layers

    def __call__(self, texts: list[str]) -> torch.Tensor:
        forward = lambda ids, mask: self.model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
        return torch.from_numpy(predict_probs(forward, self.tokenizer, texts, self.max_length, SCORING_BATCH,
                                              activation=self.answers.probabilities))


def served_run(config: ExplainBenchConfig, name: str) -> Served:
    rd = ensure_run(OutOfScopeBenchConfig(data_root=config.data_root, runs=config.runs), name)
    labels = rd.read_labels()
    temperature = run_problem(rd.path, labels).temperature  # where serving reads it: the model's config.json
    return Served(rd.model_dir, rd.read_run()["config"]["max_length"], SingleLabelAnswers(labels, temperature))


def sample_of(config: ExplainBenchConfig, name: str) -> list[str]:
    return sample_texts(pd.read_csv(config.data_root / name / "test.csv")["text"].tolist(), config.texts, config.seed)


# ---------------------------------------------------------------- parts

def faithfulness(config: ExplainBenchConfig, name: str) -> dict:
    model = served_run(config, name)
    texts = sample_of(config, name)
    started, explained = time.perf_counter(), []
    for i in range(0, len(texts), EXPLAIN_CHUNK):
        explained += explain(texts[i: i + EXPLAIN_CHUNK], model, model.answers)
        log.info("%s: %d/%d texts explained in %.0f s", name, len(explained), len(texts), time.perf_counter() - started)
    rng, variants, same, shared = random.Random(config.seed), [], 0, []
    for text, result in zip(texts, explained, strict=True):
        words = words_of(text)
        chosen = picks([a["weight"] for a in result["attributions"]], config.words, rng)
        same += chosen["random"] == chosen["top"]
        shared.append(bool(set(chosen["random"]) & set(chosen["top"])))
        variants += [without(text, [words[i] for i in chosen[p]]) for p in PICKS]
    probs = model(variants).numpy()
    drops = {p: [] for p in PICKS}
    for j, result in enumerate(explained):
        label = model.answers.labels.index(result["label"])
        for m, p in enumerate(PICKS):
            drops[p].append(result["score"] - float(probs[len(PICKS) * j + m, label]))
    words = [len(words_of(t)) for t in texts]
    return {**summary(drops, same), "labels": len(model.answers.labels), "mean_words": float(np.mean(words)),
            "misses": misses(drops, shared, words), "seconds": time.perf_counter() - started}


def timed_pass(probabilities: Callable, answers, texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        explain(texts[i: i + batch], probabilities, answers)
    return time.perf_counter() - started


def throughput(config: ExplainBenchConfig) -> dict:
    six = served_run(config, SPEED_RUN)
    student_dir = config.work / f"{SPEED_RUN}-first{len(FIRST_LAYERS)}"
    if not (student_dir / "config.json").is_file():
        student_from_layers(RunDir(config.runs / SPEED_RUN).model_dir, FIRST_LAYERS, student_dir)
    three = Served(student_dir, six.max_length, six.answers)  # for speed only: its answers are not calibrated
    models = {f"{SPEED_RUN} MiniLM-L6": six, f"{SPEED_RUN} first {len(FIRST_LAYERS)} layers": three}
    texts = sample_of(config, SPEED_RUN)[: config.speed_texts]
    words = [len(words_of(t)) for t in texts]
    for model in models.values():  # warm-up: first-call costs are not the steady state
        timed_pass(model, model.answers, texts[: config.batch], config.batch)
    seconds = {name: [] for name in models}
    for _ in range(config.repeats):
        for name, model in models.items():
            seconds[name].append(timed_pass(model, model.answers, texts, config.batch))
            log.info("%s: %d texts explained in %.1f s", name, len(texts), seconds[name][-1])
    return {name: {"layers": model.layers, "texts": len(texts), "batch": config.batch,
                   "mean_words": float(np.mean(words)), "rows_per_text": float(np.mean(words)) + 1,
                   "texts_per_s": len(texts) / min(seconds[name]), "seconds": seconds[name]}
            for name, model in models.items()}


def main(config: ExplainBenchConfig) -> dict:
    missing = [name for name in DATASETS if not (config.data_root / name / "test.csv").is_file()]
    if missing:
        raise UserError(f"benchmark data not found: {config.data_root / missing[0] / 'test.csv'} (pass --data-root)")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    results = {"command": command_line(PROG, config), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
               "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg(),
               "words": config.words, "batch": config.batch, "seed": config.seed,
               "faithfulness": {name: faithfulness(config, name) for name in DATASETS},
               "throughput": throughput(config), "load_average_end": os.getloadavg()}
    write_results(config.out.parent, config.out.name, results, markdown(results))
    log.info("results in %s.{json,md}", config.out)
    return results


def command(argv=None, prog=PROG) -> int:
    return run(main, ExplainBenchConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
