"""Knowing when the model does not know: the baselines a model must beat (training.baselines), export's floor,
the multi-label threshold floor, and the temperature kept only when it lowers out-of-fold calibration error."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from training.baselines import MAJORITY, TFIDF, baselines, verdict
from training.problems import MultiLabel, SingleLabel, below_floor, choose_temperature, choose_thresholds, rescale
from training.report import calibration
from training.scores import f1_scores

SPORT = ["football", "goal", "match", "referee", "striker", "league"]
FOOD = ["pizza", "pasta", "cheese", "recipe", "oven", "garlic"]


def frame(rows: list[tuple[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def sentences(words: list[str], n: int, offset: int = 0) -> list[str]:
    """`n` distinct texts made of `words` only."""
    return [f"{words[i % len(words)]} {words[(i * 3 + 1) % len(words)]} {words[(i + offset) % len(words)]} today"
            for i in range(n)]


# ---------------------------------------------------------------------------------------------- baselines

def test_majority_class_scores_exactly_what_always_answering_it_scores():
    train = frame([(f"t{i}", label) for i, label in enumerate(["a"] * 5 + ["b"] * 3 + ["c"] * 2)])
    test = frame([(f"u{i}", label) for i, label in enumerate(["a"] * 4 + ["b"] * 3 + ["c"] * 3)])
    found = baselines(train, test, ["a", "b", "c"], SingleLabel())
    majority = found[MAJORITY]
    assert majority["accuracy"] == pytest.approx(0.4)
    assert majority["macro_f1"] == pytest.approx((2 * 4 / (4 + 10)) / 3)  # only "a" scores, F1 8/14
    # The same keys as the model's own test metrics, so every figure can be compared.
    assert set(majority) == set(SingleLabel().headline([0, 1], np.eye(3)[:2])) == {"accuracy", "macro_f1", "samples"}
    assert found["seconds"] >= 0 and found["settings"]["tfidf"]["ngram_range"] == [1, 2]


def test_tfidf_separates_two_obviously_separable_classes():
    train = frame([(t, "sport") for t in sentences(SPORT, 20)] + [(t, "food") for t in sentences(FOOD, 12)])
    test = frame([(t, "sport") for t in sentences(SPORT, 5, 2)] + [(t, "food") for t in sentences(FOOD, 5, 2)])
    found = baselines(train, test, ["food", "sport"], SingleLabel())
    assert found[TFIDF]["accuracy"] == 1.0 and found[TFIDF]["macro_f1"] == 1.0
    assert found[MAJORITY]["accuracy"] == 0.5  # "sport", the larger class
    assert found["settings"]["tfidf"]["min_df"] == 1  # a small train set keeps its one-off words


def test_multi_label_majority_is_the_most_frequent_label_set_and_tfidf_decides_per_label():
    labels = ["fruit", "grain"]
    rows = ([(f"apple orange {i}", ("fruit",)) for i in range(4)] + [(f"apple bread {i}", ("fruit", "grain"))
                                                                      for i in range(6)]
            + [(f"bread rice {i}", ("grain",)) for i in range(5)] + [(f"hello there {i}", ()) for i in range(3)])
    test = frame([("apple orange x", ("fruit",)), ("apple bread y", ("fruit", "grain")), ("bread rice z", ("grain",)),
                  ("hello there w", ())])
    problem = MultiLabel(2)
    found = baselines(frame(rows), test, labels, problem)
    truth = problem.targets(test, labels)
    # Every text is given the most frequent set {fruit, grain}.
    assert found[MAJORITY] == f1_scores(truth, np.ones((4, 2), dtype=int))
    assert found[MAJORITY]["subset_accuracy"] == 0.25
    assert set(found[MAJORITY]) == {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "samples"}
    assert found[TFIDF]["subset_accuracy"] == 1.0 and found["settings"]["logistic_regression"]["one_vs_rest"]


# ---------------------------------------------------------------------------------------------- verdict

def found_with(majority: float, tfidf: float, metric: str = "accuracy") -> dict:
    return {MAJORITY: {metric: majority}, TFIDF: {metric: tfidf}, "seconds": 1.0, "settings": {}}


def test_verdict_names_the_baseline_the_figures_and_the_few_rows_per_label():
    judged = verdict(SingleLabel(), {"accuracy": 0.712}, found_with(0.30, 0.74), rows_per_label=9, steps=500)
    assert judged["beats"] == {MAJORITY: True, TFIDF: False} and not judged["beats_all"]
    assert judged["margin_points"] == {MAJORITY: 41.2, TFIDF: -2.8} and judged["metric"] == "accuracy"
    assert judged["lines"] == ["the model does not beat TF-IDF + logistic regression on the test split: accuracy 71.2% "
                               "vs 74.0% (-2.8 points); likely cause: only 9 training rows per label (fewer than 20)"]


def test_verdict_blames_few_steps_or_neither_and_a_tie_does_not_beat():
    few_steps = verdict(SingleLabel(), {"accuracy": 0.5}, found_with(0.5, 0.6), rows_per_label=50, steps=40)
    assert few_steps["beats"] == {MAJORITY: False, TFIDF: False} and len(few_steps["lines"]) == 2
    assert few_steps["lines"][0].startswith("the model does not beat the majority class on the test split: accuracy "
                                            "50.0% vs 50.0% (+0.0 points)")
    assert all(line.endswith("likely cause: only 40 optimizer steps (fewer than 100)") for line in few_steps["lines"])
    neither = verdict(SingleLabel(), {"accuracy": 0.5}, found_with(0.2, 0.6), rows_per_label=200, steps=3000)
    assert "likely cause: not the amount of data (200 rows per label) nor of training (3000 steps)" in neither["lines"][0]


def test_verdict_of_a_model_that_beats_both_has_no_warning_lines():
    judged = verdict(MultiLabel(3), {"micro_f1": 0.88}, found_with(0.1, 0.64, "micro_f1"), rows_per_label=5, steps=10)
    assert judged["beats_all"] and judged["lines"] == [] and judged["likely_cause"] is None
    assert judged["summary"] == ("the model beats the baselines on the test split: micro-F1 88.0 against the majority "
                                 "class 10.0, TF-IDF + logistic regression 64.0")


def test_the_shared_tiny_run_records_its_baselines(roberta_run):
    from training.summary import summary

    test = json.loads((roberta_run / "metrics.json").read_text())["test"]
    assert set(test["baselines"][MAJORITY]) == set(test["baselines"][TFIDF]) == {"accuracy", "macro_f1", "samples"}
    assert test["baselines"][MAJORITY]["samples"] == test["samples"]  # the same test split
    assert test["baseline_verdict"]["metric"] == "accuracy" and set(test["baseline_verdict"]["beats"]) == {MAJORITY, TFIDF}
    saved = json.loads((roberta_run / "report" / "baselines.json").read_text())
    assert saved == {"baselines": test["baselines"], "verdict": test["baseline_verdict"]}
    text = summary(roberta_run)
    assert "baseline the majority class: accuracy" in text and "baseline TF-IDF + logistic regression: accuracy" in text


def test_demo_shows_the_verdict_and_an_old_run_shows_nothing(roberta_run, tmp_path):
    from textclf.pipelines.demo import versus_baselines
    from training.rundir import RunDir

    shown = versus_baselines(roberta_run)
    judged = json.loads((roberta_run / "metrics.json").read_text())["test"]["baseline_verdict"]
    assert shown.strip().splitlines()[0] == f"Baselines: {judged['summary']}"
    old = RunDir(tmp_path / "old")
    old.write_metrics({"test": {"accuracy": 0.9}})
    assert versus_baselines(old.path) == ""


# ---------------------------------------------------------------------------------------------- export floor

def weak_copy(roberta_run, tmp_path, accuracy: float, majority: float, tfidf: float):
    """The shared tiny run, copied, with its recorded test accuracy and baselines rewritten."""
    copy = tmp_path / "run"
    shutil.copytree(roberta_run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test"]["accuracy"] = accuracy
    metrics["test"]["baselines"][MAJORITY]["accuracy"] = majority
    metrics["test"]["baselines"][TFIDF]["accuracy"] = tfidf
    (copy / "metrics.json").write_text(json.dumps(metrics))
    return copy


def test_export_refuses_a_run_below_the_majority_class_and_allow_weak_exports_it(roberta_run, tmp_path, caplog):
    from handlers import bundle
    from training.export import ExportConfig, main
    from training.export_checks import ExportError

    run = weak_copy(roberta_run, tmp_path, accuracy=0.25, majority=0.5, tfidf=0.6)
    with pytest.raises(ExportError, match=r"^the model does not beat the majority class on the test split: accuracy "
                                          r"25\.0% vs 50\.0% \(-25\.0 points\); not exported \(pass --allow-weak"):
        main(ExportConfig(run_dir=str(run), output_dir=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()

    with caplog.at_level(logging.WARNING, logger="training.export"):
        main(ExportConfig(run_dir=str(run), output_dir=str(tmp_path / "weak"), allow_weak=True, max_eval_samples=4))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "training.export"]
    assert any("does not beat the majority class" in m for m in warned)
    assert any("does not beat TF-IDF + logistic regression" in m for m in warned)
    card = bundle.check(tmp_path / "weak").raw
    recorded = json.loads((run / "metrics.json").read_text())["test"]["baselines"]
    assert card["training"]["baselines"] == recorded and card["training"]["baselines"][MAJORITY]["accuracy"] == 0.5


def test_export_floor_warns_below_tfidf_and_passes_runs_without_baselines(roberta_run, tmp_path, caplog):
    from training.export import check_baselines

    run = weak_copy(roberta_run, tmp_path, accuracy=0.55, majority=0.5, tfidf=0.6)
    with caplog.at_level(logging.INFO, logger="training.export"):
        check_baselines(run, "accuracy", allow_weak=False)  # above the majority class: no refusal
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "the model does not beat TF-IDF + logistic regression on the test split: accuracy 55.0% vs 60.0% (-5.0 points)"]
    caplog.clear()
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["test"]["baselines"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    with caplog.at_level(logging.INFO, logger="training.export"):
        check_baselines(run, "accuracy", allow_weak=False)
    assert "trained before baselines were recorded: not checked" in caplog.text


def test_allow_weak_is_a_command_line_flag():
    from textclf.core.options import parse_config
    from training.export import ExportConfig

    assert parse_config(ExportConfig, ["--run-dir", "r", "--output-dir", "o", "--allow-weak"]).allow_weak
    assert not parse_config(ExportConfig, ["--run-dir", "r", "--output-dir", "o"]).allow_weak


# ---------------------------------------------------------------------------------------------- threshold floor

def test_a_shared_threshold_below_the_floor_says_the_model_cannot_decide():
    rng = np.random.default_rng(0)
    truth = rng.random((200, 4)) < 0.3
    low = np.where(truth, 0.04, 0.01) + rng.random((200, 4)) * 1e-3  # separable, but every probability tiny
    thresholds, line = choose_thresholds(low, truth)
    assert thresholds == [0.03] * 4
    assert line.endswith("; shared threshold 0.03 is below 0.10: the model's probabilities are too low to decide; "
                         "train longer or with more rows per label")
    healthy = np.where(truth, 0.8, 0.1) + rng.random((200, 4)) * 1e-3
    assert "below" not in choose_thresholds(healthy, truth)[1]


def test_per_label_thresholds_below_the_floor_are_counted():
    assert below_floor([0.5, 0.02, 0.05, 0.4]) == ("; 2 of 4 labels' thresholds are below 0.10 (lowest 0.02): the model's "
                                                   "probabilities are too low to decide; train longer or with more rows "
                                                   "per label")
    assert below_floor([0.1, 0.35]) == ""


# ---------------------------------------------------------------------------------------------- temperature

def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_kept_when_it_lowers_out_of_fold_calibration_error():
    rng = np.random.default_rng(0)
    honest = softmax(rng.normal(size=(2000, 3)) * 2.0)
    truth = np.array([rng.choice(3, p=row) for row in honest])
    overconfident = rescale(honest, 1 / 3)  # logits x 3
    chosen, decision = choose_temperature(overconfident, truth)
    assert decision["applied"] and chosen == decision["temperature"] == pytest.approx(3.0, rel=0.1)
    assert decision["ece_out_of_fold_with"] < decision["ece_out_of_fold_without"] / 2 and decision["folds"] == 5
    assert decision["rule"].startswith(f"temperature {chosen:.2f} applied: out of 5 validation folds ECE ")
    assert choose_temperature(overconfident, truth) == (chosen, decision)  # deterministic with the seed


def test_temperature_refused_when_it_would_raise_calibration_error():
    rng = np.random.default_rng(0)
    # Calibrated where most texts are (top probability 0.9, right 90% of the time), plus a few confidently wrong
    # texts that pull the NLL-fitted temperature up: applied, it would flatten the well-calibrated bulk.
    n, top = 1000, rng.integers(0, 3, 1000)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), top] = 0.9
    truth = np.where(rng.random(n) < 0.9, top, (top + 1) % 3)
    probs[:30] = 0.0005
    probs[np.arange(30), top[:30]] = 0.999
    truth[:30] = (top[:30] + 1) % 3
    probs /= probs.sum(axis=1, keepdims=True)
    chosen, decision = choose_temperature(probs, truth)
    assert chosen is None and not decision["applied"] and decision["temperature"] > 1
    assert decision["ece_out_of_fold_with"] > decision["ece_out_of_fold_without"]
    assert calibration(truth, rescale(probs, decision["temperature"]))["ece"] > calibration(truth, probs)["ece"]
    assert decision["rule"].startswith("no temperature: the fitted ")

    # Already calibrated (the truth drawn from the probabilities themselves): nothing to gain.
    honest = softmax(rng.normal(size=(2000, 3)) * 2.0)
    assert choose_temperature(honest, np.array([rng.choice(3, p=row) for row in honest]))[0] is None


def test_too_few_validation_rows_keep_no_temperature():
    probs = softmax(np.random.default_rng(1).normal(size=(20, 3)) * 4)
    chosen, decision = choose_temperature(probs, np.arange(20) % 3)
    assert chosen is None and decision["folds"] == 0 and "20 validation rows are too few" in decision["rule"]
    assert decision["ece_out_of_fold_with"] is None


def test_a_gain_within_validation_noise_keeps_no_temperature(monkeypatch):
    from training import problems

    rng = np.random.default_rng(3)
    honest = softmax(rng.normal(size=(300, 3)) * 2.0)
    truth = np.array([rng.choice(3, p=row) for row in honest])
    slightly = rescale(honest, 1 / 1.3)  # a little overconfident: a small gain on 300 rows, as on the demo's 333
    chosen, decision = choose_temperature(slightly, truth)
    gain = decision["ece_out_of_fold_without"] - decision["ece_out_of_fold_with"]
    assert chosen is None and 0 < gain <= 2 * decision["gain_noise"]
    assert "by more than 2 standard deviations" in decision["rule"]
    monkeypatch.setattr(problems, "TEMPERATURE_MARGIN", 0.0)  # without the margin, the same gain is taken
    assert choose_temperature(slightly, truth)[0] == decision["temperature"]
