"""training.tune on a tiny random RoBERTa: three trials, their table and plot, best.json reproducing the best
trial through training.train's --config (its quick-run limits included) and best_full.json lifting them, the lines
the command ends with, a rerun continuing the study, pruning, and config validation."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.test_train import one_torch_thread, roberta_config, write_string_data
from textclf.core.errors import UserError
from textclf.core.options import parse_config
from training.train import TrainConfig
from training.tune import SPACE, TuneConfig, how_to_reproduce, main, pruning_callback


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_roberta_dir):
    base = tmp_path_factory.mktemp("tune")
    train = roberta_config(base / "tune", write_string_data(base / "data"), tiny_roberta_dir, max_steps=-1)
    config = TuneConfig(train=train, trials=3, startup_trials=3)  # no pruning: every trial finishes
    with one_torch_thread():
        result = main(config)
    return config, result


def test_three_trials_table_plot_and_best(tuned):
    config, result = tuned
    out = config.train.output_dir
    trials = pd.read_csv(f"{out}/trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"COMPLETE"}
    assert {f"params_{name}" for name in SPACE} <= set(trials.columns)
    assert result["best_value"] == trials["value"].max()
    table = open(f"{out}/trials.md").read().splitlines()
    assert len(table) == 2 + 3 and table[2].startswith(f"| {result['best_trial']} |")  # best first
    assert open(f"{out}/importance.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list((Path(out) / "trials").glob("*/checkpoints"))  # each trial's checkpoints are deleted


def test_best_json_reproduces_the_best_trial_through_train_config(tuned, tmp_path):
    config, result = tuned
    best_file = f"{config.train.output_dir}/best.json"
    parsed = parse_config(TrainConfig, ["--config", best_file, "--output-dir", str(tmp_path / "run")])
    best = json.loads(open(best_file).read())
    assert "output_dir" not in best
    assert asdict(parsed) == {**best, "output_dir": str(tmp_path / "run")}
    for name, value in result["best"].items():
        assert getattr(parsed, name) == value
    # the searched values are in range, the rest is the tuned recipe unchanged
    assert SPACE["learning_rate"][1] <= parsed.learning_rate <= SPACE["learning_rate"][2]
    assert parsed.batch_size in SPACE["batch_size"][1:]
    assert (parsed.data, parsed.model, parsed.max_length) == (config.train.data, config.train.model, 32)
    assert (parsed.max_train_samples, parsed.max_steps) == (30, -1)  # the trial's quick-run limit, kept
    # a flag on the command line wins over the file
    assert parse_config(TrainConfig, ["--config", best_file, "--output-dir", "x", "--epochs", "1"]).epochs == 1


def test_best_full_json_is_the_best_recipe_without_the_quick_run_limits(tuned, tmp_path):
    config, result = tuned
    assert result["limits"] == {"max_train_samples": 30}
    assert result["full_run_file"] == f"{config.train.output_dir}/best_full.json"
    full = parse_config(TrainConfig, ["--config", result["full_run_file"], "--output-dir", str(tmp_path / "run")])
    best = parse_config(TrainConfig, ["--config", result["best_file"], "--output-dir", str(tmp_path / "run")])
    assert (full.max_train_samples, full.max_steps, full.max_eval_samples) == (None, -1, None)
    assert asdict(replace(full, max_train_samples=30)) == asdict(best)  # only the limits differ


def test_the_last_lines_say_what_each_file_reproduces(tuned):
    _, result = tuned
    best, reproduce, full = how_to_reproduce(result)
    assert best.startswith(f"best: trial {result['best_trial']}, validation macro-F1 ")
    assert reproduce.startswith("reproduce that trial (with its quick-run limits --max-train-samples 30): "
                                f"textclf train --config {result['best_file']} --output-dir runs/NAME")
    assert full.startswith("a full run with its hyperparameters (limits lifted): "
                           f"textclf train --config {result['full_run_file']} --output-dir runs/NAME")
    assert f'(make train RUN=runs/NAME ARGS="--config {result["full_run_file"]}")' in full
    unlimited = how_to_reproduce({**result, "limits": {}, "full_run_file": None})
    assert len(unlimited) == 2 and "a full run: the trials had no quick-run limits" in unlimited[1]


def test_rerun_continues_the_study(tuned):
    config, _ = tuned
    with one_torch_thread():
        result = main(replace(config, trials=4))
    assert result["trials"] == 4 and len(pd.read_csv(f"{config.train.output_dir}/trials.csv")) == 4


def test_pruning_callback_reports_per_evaluation_and_stops_training():
    reported = []
    trial = SimpleNamespace(report=lambda value, step: reported.append((step, value)), should_prune=lambda: True)
    callback = pruning_callback(trial, evals_per_epoch=2)
    control = SimpleNamespace(should_training_stop=False)
    callback.on_evaluate(None, SimpleNamespace(epoch=1.5), control, metrics={"eval_macro_f1": 0.7})
    assert reported == [(3, 0.7)] and control.should_training_stop and callback.pruned


@pytest.mark.parametrize("overrides, train_overrides, flag", [
    ({"trials": 0}, {}, "--trials"),
    ({"minutes": 0}, {}, "--minutes"),
    ({}, {"refit": True}, "--refit"),
    ({}, {"early_stopping_patience": 0}, "--early-stopping-patience"),
])
def test_config_validation(overrides, train_overrides, flag):
    with pytest.raises(UserError, match=flag):
        TuneConfig(train=TrainConfig(output_dir="unused", **train_overrides), **overrides)
