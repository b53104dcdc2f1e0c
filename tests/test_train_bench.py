"""bench.train_bench's bookkeeping without training anything: the order rows run in, the sweep point our
defaults already are, resuming an interrupted part, and the targets written under each table."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import train_bench
from bench.train_bench import (
    PLAINS,
    SWEEP,
    TrainBenchConfig,
    compare_recipes,
    markdown,
    recipe_jobs,
    recipe_rows,
    sweep_name,
    targets,
)
from textclf.core.errors import UserError


def row(accuracy: float, macro_f1: float, seconds: float, settings: dict) -> dict:
    return {"test": {"accuracy": accuracy, "macro_f1": macro_f1}, "train_seconds": seconds, "epochs": 3.0,
            "settings": settings}


OURS_SETTINGS = {"learning_rate": 1e-4, "epochs": 10, "batch_size": 32, "early_stopping_patience": 3,
                 "evals_per_epoch": 2}


def test_rows_run_targets_first_and_interleave_datasets():
    jobs = recipe_jobs(Path("data"), Path("runs"), None)
    assert [(d, k) for d, k, _ in jobs[:5]] == [("rt-polarity", "ours"), ("banking77", "ours"),
                                                 ("banking77-multi", "ours"), ("rt-polarity", "plain"),
                                                 ("banking77", "plain")]
    # banking77-multi has no plain rows here (bench.multilabel_bench has them), only ours and the sweep
    assert len(jobs) == 2 * (1 + len(PLAINS) + len(SWEEP)) + 1 + len(SWEEP)
    assert set(recipe_rows("x")) == {"ours", *PLAINS, *(sweep_name(p) for p in SWEEP)}
    assert recipe_rows("banking77-multi") == ["ours", *(sweep_name(p) for p in SWEEP)]
    multi = [job for d, _, job in jobs if d == "banking77-multi"]
    assert all(job.args[1] == {"label_column": "labels", "label_separator": "|"} for job in multi)
    # every row writes its own run directory
    assert len({job.args[2] for _, _, job in jobs}) == len(jobs)
    only = recipe_jobs(Path("data"), Path("runs"), None, datasets=("rt-polarity",))
    assert [(d, k) for d, k, _ in only] == [(d, k) for d, k, _ in jobs if d == "rt-polarity"]


def test_unknown_dataset_refused():
    with pytest.raises(UserError, match="--datasets: unknown imdb"):
        TrainBenchConfig(datasets="rt-polarity,imdb")


def test_defaults_fill_the_sweep_point_they_are_and_saved_rows_are_skipped(monkeypatch):
    ran = []

    def fake_jobs(*_):
        return [("rt-polarity", key, lambda key=key: ran.append(key) or row(0.8, 0.8, 10, {**OURS_SETTINGS, "epochs": 3}))
                for key in recipe_rows("rt-polarity")]

    monkeypatch.setattr(train_bench, "recipe_jobs", fake_jobs)
    results = {"rt-polarity": {"ours": row(0.85, 0.85, 100, OURS_SETTINGS), "plain": row(0.8, 0.8, 90, PLAINS["plain"])}}
    saves = []
    compare_recipes(results, Path("data"), Path("runs"), None, save=lambda: saves.append(1))
    same = sweep_name({"learning_rate": 1e-4, "epochs": 10})
    assert same not in ran and results["rt-polarity"][same]["same_as"] == "ours"
    assert "ours" not in ran and "plain" not in ran  # finished in an earlier invocation
    assert len(ran) == len(recipe_rows("x")) - 3 and len(saves) == len(ran) + 1


def test_targets_state_met_and_missed():
    rows = {"ours": row(0.905, 0.90, 120, OURS_SETTINGS), "plain": row(0.85, 0.85, 100, PLAINS["plain"]),
            sweep_name(SWEEP[1]): row(0.93, 0.92, 200, {**OURS_SETTINGS, "learning_rate": 2e-4})}
    b77 = targets(rows, "banking77")
    assert b77[0].startswith("defaults within 1 point macro-F1 of the sweep's best (92.0, 1 of 6")
    assert b77[0].endswith("open until every point has run")  # a partial sweep cannot meet or miss it
    assert b77[1] == "banking77 accuracy >= 90%: 90.5%, met"
    assert targets(rows, "rt-polarity")[1] == "training time <= 1.5x the plain recipe: 1.20x, met"


def test_markdown_marks_rows_not_run():
    results = {"rt-polarity": {"ours": row(0.85, 0.85, 100, OURS_SETTINGS)},
               "banking77-imbalanced": {"recipe": {"epochs": 6, "learning_rate": 1e-4, "batch_size": 32},
                                        **{k: {"test": {"accuracy": 0.7, "macro_f1": 0.6},
                                               "groups": {"cut": {"f1": 0.3, "recall": 0.2}, "other": {"f1": 0.8}}}
                                           for k in ("none", "balanced")}}}
    text = markdown(results)
    assert "| ours | lr 0.0001, cap 10 epochs, patience 3 (of 2/epoch) | 3.00 | 85.0% | 85.0 | - | 100 | - |" in text
    assert "| plain | not run |" in text and "| balanced | 70.0% |" in text


def test_multi_label_rows_show_subset_accuracy():
    multi = {"test": {"subset_accuracy": 0.66, "micro_f1": 0.86, "macro_f1": 0.857}, "train_seconds": 1766,
             "epochs": 10.0, "settings": OURS_SETTINGS}
    results = {"banking77-multi": {"ours": multi},
               "banking77-imbalanced": {"recipe": {"epochs": 6, "learning_rate": 1e-4, "batch_size": 32},
                                        **{k: {"test": {"accuracy": 0.7, "macro_f1": 0.6},
                                               "groups": {"cut": {"f1": 0.3, "recall": 0.2}, "other": {"f1": 0.8}}}
                                           for k in ("none", "balanced")}}}
    text = markdown(results)
    assert "| ours | lr 0.0001, cap 10 epochs, patience 3 (of 2/epoch) | 10.00 | 66.0% | 85.7 | - | 1766 | - |" in text
    assert "accuracy is subset accuracy" in text and "| plain |" not in text.split("### banking77-multi")[1]
