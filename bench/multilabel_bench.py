"""Multi-label benchmark: TF-IDF baseline, the plain Hugging Face recipe and ours on banking77-multi.

    python -m bench.multilabel_bench [--data-root ../shared/data] [--runs runs/bench] [--parts a,b,c]
                                     [--class-weights none|balanced] [--max-train-samples N] [--threads N]

One invocation, same split (train.csv / test.csv of banking77-multi, 1-3 of 77 intents per text), same
embedded encoder, every row scored by training.problems.f1_scores:
  a  TF-IDF 1-2-grams + one-vs-rest logistic regression; the best of thresholds 0.5 / 0.3 / 0.2 *on test*
  b  the plain Hugging Face multi-label recipe (bench/plain_multilabel.py): BCE, threshold 0.5
  c  ours: training.train with early stopping on validation macro-F1 at thresholds tuned on validation
Writes bench/results/multilabel.{json,md} (multilabel-smoke.* with --max-train-samples). A run of some parts
merges into the existing results, so rows may come from different runs: each row records its own machine.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from handlers.checks import check_int
from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import check_choices, option, run

RESULTS = Path(__file__).parent / "results"
ROOT = paths.ROOT
DATASET, LABEL_COLUMN, SEPARATOR = "banking77-multi", "labels", "|"
SEED = 13
# Recipe settings live here once; each result row stores its own copy, so the table states what ran.
# TF-IDF's C: scikit-learn's default C=1 underfits 77 labels with ~250 positives each (macro-F1 63.2 at 0.2 on the
# full data, 2026-11-28); C=10 gives 76.1, close to the figure this baseline was first quoted at (76.4).
TFIDF = {"ngram_range": [1, 2], "C": 10.0, "classifier": "one-vs-rest logistic regression (lbfgs)",
         "thresholds": [0.5, 0.3, 0.2], "threshold_picked_on": "test"}
PLAIN = {"epochs": 5, "batch_size": 32, "learning_rate": 1e-4, "threshold": 0.5}
# Ours is the product's defaults: the recipe picks the learning rate (2e-4 for MiniLM multi-label), each row
# records the rate it used.
OURS = {"epochs": 10, "batch_size": 32}
RECIPES = {"a": "tfidf", "b": "plain", "c": "ours"}
# "Far above" the TF-IDF baseline, in macro-F1 points; the baseline's threshold is even picked on test.
FAR_POINTS = 10


# ---------------------------------------------------------------- data

def read_split(path: Path) -> tuple[list[str], list[list[str]]]:
    """Texts and their label lists from a `text,labels` file (labels joined with `|`; empty: no label)."""
    frame = pd.read_csv(path, keep_default_na=False)
    return frame["text"].astype(str).tolist(), [[label for label in s.split(SEPARATOR) if label] for s in frame[LABEL_COLUMN]]


def binarize(label_lists: list[list[str]], labels: list[str]) -> np.ndarray:
    index = {name: j for j, name in enumerate(labels)}
    y = np.zeros((len(label_lists), len(labels)), dtype=int)
    for i, names in enumerate(label_lists):
        y[i, [index[n] for n in names]] = 1
    return y


def load(folder: Path, max_train_samples: int | None = None):
    """(train texts, train 0/1, test texts, test 0/1, labels): the whole train file, or a seeded subset of it.
    Labels are every label of train and test, sorted: a label a small subset misses still counts on test."""
    train_texts, train_lists = read_split(folder / "train.csv")
    test_texts, test_lists = read_split(folder / "test.csv")
    if max_train_samples is not None and max_train_samples < len(train_texts):
        keep = sorted(np.random.default_rng(SEED).permutation(len(train_texts))[:max_train_samples])
        train_texts, train_lists = [train_texts[i] for i in keep], [train_lists[i] for i in keep]
    labels = sorted({label for ls in train_lists + test_lists for label in ls})
    return train_texts, binarize(train_lists, labels), test_texts, binarize(test_lists, labels), labels


# ---------------------------------------------------------------- recipes

def tfidf(train_texts, train_y, test_texts, test_y, thresholds=tuple(TFIDF["thresholds"])) -> dict:
    """Fit TF-IDF + one-vs-rest logistic regression; score each threshold on test and keep the best macro-F1
    (the metric the targets compare), which flatters the baseline: the threshold has seen the test labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from training.scores import f1_scores

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=tuple(TFIDF["ngram_range"]))
    classifier = OneVsRestClassifier(LogisticRegression(C=TFIDF["C"], max_iter=1000))
    classifier.fit(vectorizer.fit_transform(train_texts), train_y)
    seconds = time.perf_counter() - started
    probs = classifier.predict_proba(vectorizer.transform(test_texts))
    by_threshold = {str(t): f1_scores(test_y, (probs >= t).astype(int)) for t in thresholds}
    best = max(thresholds, key=lambda t: by_threshold[str(t)]["macro_f1"])
    return {"test": by_threshold[str(best)], "threshold": best, "by_threshold": by_threshold,
            "train_seconds": round(seconds, 1), "train_examples": len(train_texts), "epochs": None,
            "samples_per_second": round(len(train_texts) / seconds, 2)}  # rows fitted per second of the whole fit


def plain(folder: Path, runs: Path, max_train_samples: int | None) -> dict:
    from bench import plain_multilabel
    from training.train import resolve_model

    train_texts, train_y, test_texts, test_y, _ = load(folder, max_train_samples)
    return plain_multilabel.run(train_texts, train_y, test_texts, test_y, resolve_model("embedded"),
                                runs / f"{DATASET}-plain", epochs=PLAIN["epochs"], batch_size=PLAIN["batch_size"],
                                lr=PLAIN["learning_rate"], seed=SEED)


def ours(folder: Path, runs: Path, max_train_samples: int | None, class_weights: str = "none") -> dict:
    from training.rundir import RunDir
    from training.train import TrainConfig
    from training.train import main as train_main

    out = runs / f"{DATASET}-ours-{class_weights}"
    config = TrainConfig(output_dir=str(out), data=str(folder),
                         label_column=LABEL_COLUMN, label_separator=SEPARATOR, max_train_samples=max_train_samples,
                         class_weights=class_weights, seed=SEED, resume=False, progress=True, **OURS)
    metrics = train_main(config)
    keys = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "samples")
    train, run = metrics["train"], RunDir(out).read_run()
    return {"test": {k: metrics["test"][k] for k in keys}, "train_seconds": train["seconds"],
            "train_examples": train["examples"], "samples_per_second": train["samples_per_second"],
            "epochs": train["epochs"], "thresholds_chosen": run["thresholds_chosen"],
            "learning_rate": run["plan"]["learning_rate"]}


def run_recipe(part: str, folder: Path, runs: Path, max_train_samples: int | None, class_weights: str) -> tuple[str, dict]:
    """(results key, row) for one part; the row carries its settings and the machine it ran on."""
    started = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average_start": os.getloadavg()}
    if part == "a":
        key, settings = "tfidf", TFIDF
        row = tfidf(*load(folder, max_train_samples)[:4])
    elif part == "b":
        key, settings = "plain", PLAIN
        row = plain(folder, runs, max_train_samples)
    else:
        key = "ours" if class_weights == "none" else f"ours-{class_weights}"
        row = ours(folder, runs, max_train_samples, class_weights)
        settings = {**OURS, "learning_rate": row.pop("learning_rate"), "class_weights": class_weights}
    return key, {**row, "settings": settings, "max_train_samples": max_train_samples,
                 "run": {**started, "load_average_end": os.getloadavg(), "machine": machine()}}


def machine() -> dict:
    """The serving benchmark's machine record plus its CPU class: timings only compare within one class."""
    from bench.serve_bench import machine as serve_machine
    from bench.serve_report import cpu_class

    m = serve_machine()
    return {**m, "cpu_class": cpu_class(m["isa"])}


# ---------------------------------------------------------------- report

def targets(results: dict) -> list[dict]:
    """The issue's targets, each met / not met, or None when a row it needs has not been measured."""
    def check(name: str, a: str, b: str, metric: str, margin_points: float) -> dict:
        if a not in results or b not in results:
            return {"name": name, "met": None, "detail": "not measured"}
        delta = 100 * (results[a]["test"][metric] - results[b]["test"][metric])
        return {"name": name, "met": bool(delta >= margin_points - 1e-9), "detail": f"{delta:+.1f} points"}

    out = []
    for key in [k for k in results if k.startswith("ours")] or ["ours"]:
        out += [check(f"{key} macro-F1 >= plain + 1 point", key, "plain", "macro_f1", 1),
                check(f"{key} subset accuracy >= plain", key, "plain", "subset_accuracy", 0),
                check(f"{key} macro-F1 >= TF-IDF + {FAR_POINTS} points", key, "tfidf", "macro_f1", FAR_POINTS)]
    out.append(check(f"plain macro-F1 >= TF-IDF + {FAR_POINTS} points", "plain", "tfidf", "macro_f1", FAR_POINTS))
    return out


def settings_text(key: str, row: dict) -> str:
    s, n = row["settings"], f"{row['train_examples']:,} rows"
    if key == "tfidf":
        return (f"TF-IDF {s['ngram_range'][0]}-{s['ngram_range'][1]}-grams, {s['classifier']} C={s['C']:g}, {n}; threshold "
                f"{row['threshold']:g}, best macro-F1 of {'/'.join(f'{t:g}' for t in s['thresholds'])} **picked on test**")
    if key == "plain":
        return (f"HF BCE, threshold {s['threshold']:g}, Trainer defaults, lr {s['learning_rate']:g}, "
                f"{s['epochs']:g} epochs, batch {s['batch_size']}, {n} ({_share(row)})")
    return (f"training.train, lr {s['learning_rate']:g}, up to {s['epochs']:g} epochs (early stopping on validation "
            f"macro-F1 at tuned thresholds), batch {s['batch_size']}, class weights {s['class_weights']}, "
            f"{n} (what is left of {_share(row)} after carving 10% for validation)")


def _share(row: dict) -> str:
    return "all of train" if row.get("max_train_samples") is None else "a --max-train-samples subset of train"


def markdown(results: dict) -> str:
    rows = ["| recipe | settings | micro-F1 | macro-F1 | samples-F1 | subset accuracy | Hamming loss | epochs run "
            "| train wall (s) | train samples/s | CPU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key in [k for k in ("tfidf", "plain") if k in results] + sorted(k for k in results if k.startswith("ours")):
        r, t, m = results[key], results[key]["test"], results[key]["run"]["machine"]
        epochs = "" if r["epochs"] is None else f"{r['epochs']:.2f}"
        rows.append(f"| {key} | {settings_text(key, r)} | {100 * t['micro_f1']:.1f} | {100 * t['macro_f1']:.1f} "
                    f"| {100 * t['samples_f1']:.1f} | {100 * t['subset_accuracy']:.1f}% | {t['hamming_loss']:.4f} "
                    f"| {epochs} | {r['train_seconds']:.0f} | {r['samples_per_second']:.1f} "
                    f"| {m['cpu_class']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads |")
    rows += ["", "| target | result | met |", "| --- | --- | --- |"]
    rows += [f"| {t['name']} | {t['detail']} | {_met(t['met'])} |" for t in targets(results)]
    notes = ["", f"Test set: {DATASET}/test.csv, every row scored by training.problems.f1_scores."]
    if "tfidf" in results:
        by = results["tfidf"]["by_threshold"]
        notes.append("TF-IDF's threshold was picked on the test set, which flatters the baseline; at each threshold: "
                     + "; ".join(f"{t}: micro-F1 {100 * s['micro_f1']:.1f}, macro-F1 {100 * s['macro_f1']:.1f}, "
                                 f"subset accuracy {100 * s['subset_accuracy']:.1f}%" for t, s in by.items()) + ".")
    notes += [f"Decision thresholds of {key}: {results[key]['thresholds_chosen']}." for key in _rows(results)
              if "thresholds_chosen" in results[key]]
    notes += [f"Row {key} is {results[key]['source']}." for key in _rows(results) if "source" in results[key]]
    if any(results[k].get("max_train_samples") for k in _rows(results)):
        notes.append("Smoke run: training rows limited by --max-train-samples; the targets are for the full run.")
    return "\n".join(rows + notes) + "\n"


def _met(met) -> str:
    return "not measured" if met is None else ("**met**" if met else "not met")


def _rows(results: dict) -> list[str]:
    return [k for k in results if k in ("tfidf", "plain") or k.startswith("ours")]


def run_parts(data_root: Path, runs: Path, parts: tuple[str, ...], max_train_samples: int | None = None,
              class_weights: str = "none") -> dict:
    """Run the named parts in order. A run of every part starts a fresh results file; a run of some parts keeps
    the other rows of the existing one (as bench.train_bench does)."""
    stem = "multilabel" + ("" if max_train_samples is None else "-smoke")
    out = RESULTS / f"{stem}.json"
    results = json.loads(out.read_text()) if set(parts) != set(RECIPES) and out.exists() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in parts:
        key, row = run_recipe(part, Path(data_root) / DATASET, Path(runs), max_train_samples, class_weights)
        results[key] = row
        out.write_text(json.dumps(results, indent=2) + "\n")  # each finished recipe survives an interruption
    report = markdown(results)
    (RESULTS / f"{stem}.md").write_text(f"# Multi-label benchmark\n\n`python -m bench.multilabel_bench`\n\n{report}")
    print(report)
    return results


# ---------------------------------------------------------------- entry point

def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in RECIPES]
    if bad or not parts:
        raise ValueError(f"--parts takes a comma-separated subset of a,b,c (a: TF-IDF, b: plain, c: ours), got {text!r}")
    return tuple(p for p in RECIPES if p in parts)  # always a, b, c order: the cheap ones first


@dataclass
class MultilabelBenchConfig:
    """Multi-label benchmark on banking77-multi: TF-IDF + logistic regression (a), the plain Hugging Face
    recipe (b) and ours (c), same split, same embedded encoder."""

    data_root: Path = option("folder holding banking77-multi/ (train.csv, test.csv)", ROOT.parent / "shared" / "data")
    runs: Path = option("where the benchmark's run directories go", Path("runs/bench"))
    parts: tuple = option("recipes to run, comma-separated: a TF-IDF, b plain, c ours (the others' rows are kept "
                          "from the existing results)", "a,b,c", parse=parse_parts)
    class_weights: Literal["none", "balanced"] = option(
        "ours: 'balanced' adds a pos_weight per label (negatives / positives); its row is kept as ours-balanced", "none")
    max_train_samples: int | None = option("smoke-test on a subset of train (writes multilabel-smoke.*)", None)
    threads: int | None = option("torch and BLAS threads for every recipe (1 keeps the comparison fair on a "
                                    "shared machine; default: every core)", None)

    def __post_init__(self):
        check_choices(self)
        try:  # argparse has parsed it already; a config built in Python may hold a string or any sequence
            self.parts = parse_parts(self.parts if isinstance(self.parts, str) else ",".join(self.parts))
        except ValueError as e:
            raise UserError(str(e)) from None
        check_int("--max-train-samples", self.max_train_samples, 2, optional=True, error=UserError)
        check_int("--threads", self.threads, 1, optional=True, error=UserError)
        folder = Path(self.data_root) / DATASET
        if not all((folder / f"{split}.csv").exists() for split in ("train", "test")):
            raise UserError(f"benchmark data not found: {folder}/train.csv and test.csv; pass --data-root")


def main(config: MultilabelBenchConfig) -> dict:
    if config.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(config.threads)
        threadpool_limits(config.threads)  # the BLAS under scikit-learn (TF-IDF) too, not only torch
    return run_parts(Path(config.data_root), Path(config.runs), config.parts, config.max_train_samples,
                     config.class_weights)


if __name__ == "__main__":
    sys.exit(run(main, MultilabelBenchConfig, prog="python -m bench.multilabel_bench"))
