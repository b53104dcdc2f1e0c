"""Training benchmark: our recipe vs the plain tutorial recipe, same data, same model, one invocation.

    python -m bench.train_bench [--data-root ../shared/data] [--runs runs/bench] [--part recipes|class-weights]

Writes bench/results/train.json and bench/results/train.md. Part `recipes`: plain vs ours on the full
rt-polarity and banking77 (about 35 minutes on 2 cores). Part `class-weights`: banking77 with a
third of its classes cut to 10% of their rows, trained with and without --class-weights balanced
(about 15 minutes). A part run alone replaces its entry in the existing results.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
import torch

from bench import plain_recipe
from cli import UserError, check_choices, check_int, option, run
from training.data import load_splits
from training.report import label_rows
from training.train import TrainConfig, resolve_model
from training.train import main as train_main

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"rt-polarity": "label", "banking77": "category"}
# The plain recipe's settings are the reference run (2 epochs, batch 32, lr 5e-5). Ours keeps the
# product defaults: up to 3 epochs, early stopping on validation macro-F1, the best epoch restored.
PLAIN = {"epochs": 2, "batch_size": 32, "learning_rate": 5e-5}
OURS = {"epochs": 3, "batch_size": 32, "learning_rate": 5e-5}
# Both class-weight runs share this recipe; with OURS the 26 cut classes (about 10 training rows each)
# are never predicted at all in 3 epochs, weighted or not, which shows nothing about the weighting.
CLASS_WEIGHTS = {"epochs": 6, "batch_size": 32, "learning_rate": 1e-4}


def ours(data: str, label_column: str, out: Path, max_train_samples=None, class_weights="none", recipe=OURS) -> dict:
    config = TrainConfig(output_dir=str(out), data=data, label_column=label_column, max_train_samples=max_train_samples,
                         class_weights=class_weights, resume=False, progress=True, **recipe)
    metrics = train_main(config)
    return {"test": {k: metrics["test"][k] for k in ("accuracy", "macro_f1", "samples", "per_class")},
            "train_seconds": metrics["train"]["seconds"], "train_examples": metrics["train"]["examples"],
            "samples_per_second": metrics["train"]["samples_per_second"], "epochs": metrics["train"]["epochs"]}


def plain(data: str, label_column: str, out: Path, max_train_samples=None) -> dict:
    splits = load_splits(data, label_column=label_column, max_train_samples=max_train_samples)
    return plain_recipe.run(splits, resolve_model("embedded"), out, epochs=PLAIN["epochs"],
                            batch_size=PLAIN["batch_size"], lr=PLAIN["learning_rate"])


def imbalanced_banking77(src: Path, dst: Path, seed: int = 13) -> tuple[Path, set[str]]:
    """banking77 with every third class (alphabetically) cut to 10% of its training rows; the cut classes."""
    train = pd.read_csv(src / "train.csv")
    cut = set(sorted(train["category"].unique())[::3])
    rng = np.random.default_rng(seed)
    keep = [g if name not in cut else g.iloc[rng.permutation(len(g))[: max(2, len(g) // 10)]]
            for name, g in train.groupby("category", sort=True)]
    dst.mkdir(parents=True, exist_ok=True)
    pd.concat(keep).to_csv(dst / "train.csv", index=False)
    pd.read_csv(src / "test.csv").to_csv(dst / "test.csv", index=False)
    return dst, cut


def markdown(results: dict) -> str:
    rows = ["| dataset | recipe | epochs run | accuracy | macro-F1 | train wall (s) | train samples/s | throughput vs plain |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in DATASETS:
        base = results[name]["plain"]["samples_per_second"]
        for recipe in ("plain", "ours"):
            r = results[name][recipe]
            rows.append(f"| {name} | {recipe} | {r['epochs']:.2f} | {100 * r['test']['accuracy']:.1f}% | {100 * r['test']['macro_f1']:.1f} "
                        f"| {r['train_seconds']:.0f} | {r['samples_per_second']:.1f} | {r['samples_per_second'] / base:.2f}x |")
    w = results["banking77-imbalanced"]
    rows += ["", f"Class weights on banking77 with 26 of 77 classes cut to 10% of their rows (test split unchanged; "
             f"both runs: {w['recipe']['epochs']} epochs, lr {w['recipe']['learning_rate']:g}, batch {w['recipe']['batch_size']}):", "",
             "| --class-weights | accuracy | macro-F1 | mean F1, 26 cut classes | mean recall, cut | mean F1, 51 other classes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in ("none", "balanced"):
        g = w[k]["groups"]
        rows.append(f"| {k} | {100 * w[k]['test']['accuracy']:.1f}% | {100 * w[k]['test']['macro_f1']:.1f} "
                    f"| {100 * g['cut']['f1']:.1f} | {100 * g['cut']['recall']:.1f} | {100 * g['other']['f1']:.1f} |")
    return "\n".join(rows) + "\n"


def group_means(per_class: dict, cut: set[str]) -> dict:
    """Mean F1 and recall over the cut classes and over the others (where the weighting should show)."""
    names = list(label_rows(per_class))
    groups = {"cut": [n for n in names if n in cut], "other": [n for n in names if n not in cut]}
    return {g: {m: float(np.mean([per_class[n][key] for n in members])) for m, key in (("f1", "f1-score"), ("recall", "recall"))}
            for g, members in groups.items()}


def compare_recipes(results: dict, data_root: Path, runs: Path, max_train_samples) -> None:
    for name, label_column in DATASETS.items():
        data = str(data_root / name)
        results[name] = {"plain": plain(data, label_column, runs / f"{name}-plain", max_train_samples)}
        results[name]["ours"] = ours(data, label_column, runs / name, max_train_samples)


def compare_class_weights(results: dict, data_root: Path, runs: Path, max_train_samples) -> None:
    imbalanced, cut = imbalanced_banking77(data_root / "banking77", runs / "data" / "banking77-imbalanced")
    part = {"recipe": CLASS_WEIGHTS}
    for w in ("none", "balanced"):
        part[w] = ours(str(imbalanced), "category", runs / f"banking77-imbalanced-{w}", max_train_samples,
                       class_weights=w, recipe=CLASS_WEIGHTS)
        part[w]["groups"] = group_means(part[w]["test"]["per_class"], cut)
    results["banking77-imbalanced"] = part


PARTS = {"recipes": compare_recipes, "class-weights": compare_class_weights}


def run_parts(data_root: Path, runs: Path, max_train_samples: int | None = None, parts=tuple(PARTS)) -> dict:
    """Run the named parts; a part run alone replaces its entry in an existing results file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    suffix = "" if max_train_samples is None else "-smoke"
    out = RESULTS / f"train{suffix}.json"
    results = json.loads(out.read_text()) if set(parts) != set(PARTS) and out.exists() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in parts:
        started = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average_start": os.getloadavg()}
        PARTS[part](results, data_root, runs, max_train_samples)
        results.setdefault("runs", {})[part] = {**started, "load_average_end": os.getloadavg(),
                                                "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}}
        results["recipes"] = {"plain": PLAIN, "ours": OURS, "class_weights": CLASS_WEIGHTS}
        out.write_text(json.dumps(results, indent=2) + "\n")  # each finished part survives an interruption
    if all(k in results for k in (*DATASETS, "banking77-imbalanced")):
        (RESULTS / f"train{suffix}.md").write_text(markdown(results))
        print(markdown(results))
    return results


@dataclass
class TrainBenchConfig:
    """Training benchmark: our recipe against the plain tutorial one on rt-polarity and banking77, and class
    weights on a banking77 copy with a third of its classes cut to a tenth of their rows."""

    data_root: Path = option("folder holding rt-polarity/ and banking77/", ROOT.parent / "shared" / "data")
    runs: Path = option("where the benchmark's run directories go", Path("runs/bench"))
    max_train_samples: Optional[int] = option("smoke-test the benchmark on a subset", None)
    threads: Optional[int] = option("torch threads for both recipes (1 keeps the comparison fair on a shared "
                                    "machine; default: every core)", None)
    part: Literal["recipes", "class-weights", "all"] = option(
        "recipes: plain vs ours on both sets; class-weights: none vs balanced", "all")

    def __post_init__(self):
        check_choices(self)
        check_int("--max-train-samples", self.max_train_samples, 2, optional=True)
        check_int("--threads", self.threads, 1, optional=True)
        if not (Path(self.data_root) / "rt-polarity" / "train.csv").exists():
            raise UserError(f"benchmark data not found under {self.data_root}; pass --data-root")


def main(config: TrainBenchConfig) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    parts = tuple(PARTS) if config.part == "all" else (config.part,)
    return run_parts(Path(config.data_root), Path(config.runs), config.max_train_samples, parts)


if __name__ == "__main__":
    sys.exit(run(main, TrainBenchConfig, prog="python -m bench.train_bench"))
