"""training.train end to end on tiny random encoders: the run directory, label order, class weights,
gradient accumulation, resume, a real data slice, and config validation.

Each trained run costs seconds, so the two shared runs are trained once per session by `shared_run`
(test_export.py trains nothing itself and exports these same runs)."""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.tiny_runs import (
    INT_LABELS,
    STRING_LABELS,
    one_torch_thread,
    roberta_config,
    shared_run,  # noqa: F401 (test_retrain.py and live/test_feedback_loop.py import it from here)
    texts_for,  # noqa: F401 (test_train_distributed.py imports it from here)
    write_string_data,
)
from textclf.core.errors import UserError
from training.data import DataError, fingerprint, load_splits
from training.problems import SingleLabel
from training.rundir import RunDir
from training.summary import summary
from training.train import (
    TrainConfig,
    eager_probs,
    last_checkpoint,
    learning_rate_for,
    main,
    make_trainer_class,
    samples_per_second,
)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- run directory

def test_run_directory_layout_and_metrics(roberta_trained):
    run = roberta_trained / "run"
    config = read_json(run / "model" / "config.json")
    assert config["id2label"] == {"0": "mid", "1": "neg", "2": "pos"}
    assert config["label2id"] == {"mid": 0, "neg": 1, "pos": 2}
    assert (run / "model" / "model.safetensors").exists() and (run / "model" / "tokenizer.json").exists()

    metrics = read_json(run / "metrics.json")
    test = metrics["test"]
    assert test["samples"] == 12
    assert set(STRING_LABELS) <= set(test["per_class"])
    # The headline figures are those of the saved report: accuracy from its confusion matrix, macro-F1 the mean
    # of its per-label F1 (test_reported_accuracy_matches_the_saved_model recomputes them from the model).
    cm = pd.read_csv(run / "report" / "confusion_matrix.csv", index_col=0).to_numpy()
    assert test["accuracy"] == pytest.approx(cm.trace() / 12)
    assert test["macro_f1"] == pytest.approx(np.mean([test["per_class"][name]["f1-score"] for name in STRING_LABELS]))
    assert sum(test["per_class"][name]["support"] for name in STRING_LABELS) == 12
    counts = [c["count"] for c in test["top_confusions"]]
    assert counts == sorted(counts, reverse=True) and all(c > 0 for c in counts)
    assert metrics["train"]["steps"] == 2 and metrics["train"]["examples"] == 30
    # the speed counts rows seen (epochs done x rows), not the rows the Trainer planned
    seen = metrics["train"]["epochs"] * 30
    assert metrics["train"]["samples_per_second"] == pytest.approx(seen / metrics["train"]["seconds"], rel=0.02)
    assert metrics["validation"]["samples"] > 0

    meta = read_json(run / "run.json")
    assert meta["labels"] == STRING_LABELS
    assert meta["max_length"] == 32 and meta["config"]["max_steps"] == 2
    assert meta["data"]["rows"] == {"train": 30, "validation": metrics["validation"]["samples"], "test": 12}
    assert meta["data"]["validation_carved"] is True


def test_report_files_agree_with_metrics(roberta_trained):
    run = roberta_trained / "run"
    test = read_json(run / "metrics.json")["test"]
    cm = pd.read_csv(run / "report" / "confusion_matrix.csv", index_col=0)
    assert list(cm.index) == STRING_LABELS and list(cm.columns) == STRING_LABELS
    assert cm.to_numpy().sum() == 12
    correct = int(round(test["accuracy"] * 12))
    assert cm.to_numpy().trace() == correct
    assert (run / "report" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    wrong = pd.read_csv(run / "report" / "misclassified.csv")
    assert list(wrong.columns) == ["text", "true", "predicted", "confidence"]
    assert len(wrong) == 12 - correct
    assert list(wrong["confidence"]) == sorted(wrong["confidence"], reverse=True)
    assert (wrong["true"] != wrong["predicted"]).all()
    test_texts = set(pd.read_csv(roberta_trained / "data" / "test.csv")["text"])
    assert set(wrong["text"]) <= test_texts


def test_test_split_saved_for_export(roberta_trained):
    saved = pd.read_parquet(roberta_trained / "run" / "data" / "test.parquet")
    source = pd.read_csv(roberta_trained / "data" / "test.csv")
    assert list(saved.columns) == ["text", "label"]
    assert saved["text"].tolist() == source["text"].tolist()
    assert saved["label"].tolist() == source["label"].astype(str).tolist()


def test_fingerprint_describes_the_saved_test_split(tmp_path, tiny_roberta_dir):
    # --max-eval-samples used to sample test after the fingerprint was taken: run.json then described
    # a test split that was not the one saved (and scored).
    data = write_string_data(tmp_path / "data")
    main(roberta_config(tmp_path / "run", data, tiny_roberta_dir, max_steps=1, max_eval_samples=5,
                        class_weights="none", early_stopping_patience=0))
    run = RunDir(tmp_path / "run")
    meta, saved = run.read_run(), run.read_test()
    assert len(saved) == 5 and meta["data"]["rows"]["test"] == 5 and run.read_metrics()["test"]["samples"] == 5
    splits = load_splits(str(data), seed=meta["config"]["seed"], max_train_samples=30, max_eval_samples=5)
    assert saved.equals(splits.test)
    assert meta["data"]["fingerprint"] == fingerprint(splits.labels, splits.train, splits.validation, saved)
    assert meta["data"]["fingerprint"] != load_splits(str(data), max_train_samples=30).fingerprint
    # Static quantisation calibrates on training texts, never on the test split it is then scored on.
    calibration = run.read_calibration()
    assert calibration and set(calibration) <= set(splits.train["text"]) and not set(calibration) & set(saved["text"])


def test_integer_labels_keep_numeric_order(distilbert_trained):
    run = distilbert_trained / "run"
    assert read_json(run / "model" / "config.json")["id2label"] == {"0": "1", "1": "2", "2": "10"}
    assert read_json(run / "run.json")["labels"] == INT_LABELS
    assert set(pd.read_parquet(run / "data" / "test.parquet")["label"]) == set(INT_LABELS)
    assert read_json(run / "metrics.json")["test"]["samples"] == 9


def test_gradient_accumulation_does_not_scale_the_loss(distilbert_trained):
    # A near-random 3-class head starts at cross-entropy ~ln 3; summing (not averaging) the two
    # accumulated micro-batches would report ~2 ln 3.
    run = distilbert_trained / "run"
    assert read_json(run / "run.json")["config"]["grad_accum"] == 2
    assert read_json(run / "metrics.json")["train"]["loss"] < 1.3 * math.log(3)


# ---------------------------------------------------------------------------------------------- class weights

def test_samples_per_second_counts_rows_seen():
    assert samples_per_second(1.5, 1000, 10.0, None) == 150.0  # early-stopped half way through epoch 2
    assert samples_per_second(1.0, 1000, 10.0, "runs/x/checkpoint-8") is None  # resumed: the wall time is partial


def test_balanced_weights_formula():
    assert SingleLabel().balanced_weights([0, 0, 0, 1], 2) == pytest.approx([4 / 6, 2.0])
    assert SingleLabel().balanced_weights([2, 0, 1, 1, 2, 2], 3) == pytest.approx([2.0, 1.0, 2 / 3])


def test_run_json_records_balanced_weights(roberta_trained, distilbert_trained):
    meta = read_json(roberta_trained / "run" / "run.json")
    splits = load_splits(str(roberta_trained / "data"), seed=meta["config"]["seed"], max_train_samples=30)
    counts = Counter(splits.train["label"])
    n, k = len(splits.train), len(STRING_LABELS)
    assert n == 30
    assert meta["class_weights"] == pytest.approx([n / (k * counts[name]) for name in STRING_LABELS])
    assert read_json(distilbert_trained / "run" / "run.json")["class_weights"] is None


def test_weighted_loss_is_weighted_cross_entropy(roberta_trained, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    model = AutoModelForSequenceClassification.from_pretrained(roberta_trained / "run" / "model").eval()
    with torch.no_grad():  # a head that favours class 0, so per-class losses differ clearly
        model.classifier.out_proj.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer_class = make_trainer_class()
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (6, 7), generator=generator),
             "attention_mask": torch.ones(6, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 2, 2, 1, 2])}
    weights = [3.0, 1.0, 0.25]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = trainer_class(model=model, args=args, problem=SingleLabel()).compute_loss(model, dict(batch)).item()
        weighted = trainer_class(model=model, args=args, problem=SingleLabel(),
                                 class_weights=weights).compute_loss(model, dict(batch)).item()
    nll = -torch.log_softmax(logits.double(), dim=-1)[torch.arange(6), batch["labels"]]
    w = torch.tensor(weights, dtype=torch.float64)[batch["labels"]]
    assert plain == pytest.approx(nll.mean().item(), rel=1e-5)
    assert weighted == pytest.approx(((w * nll).sum() / w.sum()).item(), rel=1e-5)
    assert abs(weighted - plain) > 0.1


# ---------------------------------------------------------------------------------------------- resume

def test_last_checkpoint_is_the_highest_step(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step in (2, 10, 9):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-10")


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_roberta_dir, caplog):
    data = write_string_data(tmp_path / "data")
    out = tmp_path / "run"
    settings = dict(class_weights="none", early_stopping_patience=0, precision="fp32")
    main(roberta_config(out, data, tiny_roberta_dir, max_steps=2, **settings))
    first = out / "checkpoints" / "checkpoint-2"
    # Mark the saved trainer state: only a run that loads this checkpoint carries the marker forward.
    state = read_json(first / "trainer_state.json")
    state["log_history"].insert(0, {"step": 0, "resume_marker": 1})
    (first / "trainer_state.json").write_text(json.dumps(state))

    caplog.set_level(logging.INFO, logger="training.train")
    metrics = main(roberta_config(out, data, tiny_roberta_dir, max_steps=4, **settings))
    assert f"resuming from {first}" in caplog.text
    assert metrics["train"]["steps"] == 4
    final = read_json(out / "checkpoints" / "checkpoint-4" / "trainer_state.json")
    assert final["global_step"] == 4
    assert any(entry.get("resume_marker") for entry in final["log_history"])


# ---------------------------------------------------------------------------------------------- default recipe

@pytest.mark.parametrize("hidden, expected", [(384, 1e-4), (768, 2.5e-5), (1024, 1.40625e-5), (2048, 1e-5),
                                              (256, 2e-4), (32, 2e-4)])
def test_default_learning_rate_follows_encoder_width(hidden, expected):
    assert learning_rate_for(hidden) == pytest.approx(expected)


@pytest.mark.parametrize("hidden, expected", [(384, 2e-4), (768, 5e-5), (1024, 2.8125e-5), (4096, 1e-5)])
def test_multi_label_doubles_the_default_learning_rate_within_the_same_bounds(hidden, expected):
    from training.problems import problem_for

    multi, single = problem_for(True, 3), problem_for(False, 3)
    assert learning_rate_for(hidden, multi.learning_rate_scale) == pytest.approx(expected)
    assert learning_rate_for(hidden, single.learning_rate_scale) == learning_rate_for(hidden)


def test_run_records_the_learning_rate_it_used(roberta_trained, tmp_path, tiny_roberta_dir):
    run = read_json(roberta_trained / "run" / "run.json")
    hidden = read_json(Path(tiny_roberta_dir) / "config.json")["hidden_size"]
    assert run["config"]["learning_rate"] is None
    assert run["plan"]["learning_rate"] == learning_rate_for(hidden)
    # the Trainer's logged schedule peaks at that rate (warm-up then linear decay), never above it
    state = read_json(next((roberta_trained / "run" / "checkpoints").glob("checkpoint-*")) / "trainer_state.json")
    assert max(e["learning_rate"] for e in state["log_history"] if "learning_rate" in e) <= learning_rate_for(hidden)


def test_defaults_budget_ten_epochs_and_stop_early():
    c = TrainConfig(output_dir="unused")
    assert (c.epochs, c.early_stopping_patience, c.evals_per_epoch, c.learning_rate, c.refit) == (10, 3, 2, None, False)


def test_refit_trains_on_train_and_validation_for_the_chosen_epochs(tmp_path, tiny_roberta_dir, caplog):
    data = write_string_data(tmp_path / "data")
    caplog.set_level(logging.INFO, logger="training.train")
    metrics = main(roberta_config(tmp_path / "run", data, tiny_roberta_dir, max_steps=-1, epochs=3, refit=True,
                                  class_weights="none"))
    refit, run = metrics["train"]["refit"], read_json(tmp_path / "run" / "run.json")
    rows = run["data"]["rows"]
    assert refit["rows"] == rows["train"] + rows["validation"]
    # the epochs of the early-stopped run's best evaluation, in steps of the larger refit data
    assert 0 < refit["epochs"] <= metrics["train"]["epochs"]
    assert refit["epochs"] == pytest.approx(refit["best_step"] / run["plan"]["steps_per_epoch"], abs=1e-3)
    assert refit["plan"]["total_steps"] == math.ceil(refit["epochs"] * refit["plan"]["steps_per_epoch"])
    assert "refit: training on train + validation" in caplog.text
    assert "refit on train + validation" in summary(tmp_path / "run")
    # the saved model is the refit one (not the early-stopped best checkpoint), and it still carries the
    # temperature chosen on validation by the early-stopped model (none here: too few validation rows)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    best = load_file(Path(refit["best_checkpoint"]) / "model.safetensors")
    assert any(not (saved[k] == best[k]).all() for k in saved)
    assert read_json(tmp_path / "run" / "model" / "config.json").get("calibration_temperature") == run["temperature"]


# ---------------------------------------------------------------------------------------------- real data

def test_real_rt_polarity_slice(shared_data, tiny_roberta_dir, tmp_path):
    source = shared_data / "rt-polarity"
    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(source / "train.csv").groupby("label").head(40).to_csv(data / "train.csv", index=False)
    test = pd.read_csv(source / "test.csv").groupby("label").head(15)
    test.to_csv(data / "test.csv", index=False)

    metrics = main(roberta_config(tmp_path / "run", data, tiny_roberta_dir, max_length=64, max_train_samples=48,
                                  class_weights="none"))
    run = tmp_path / "run"
    assert read_json(run / "run.json")["labels"] == ["negative", "positive"]
    assert read_json(run / "model" / "config.json")["id2label"] == {"0": "negative", "1": "positive"}
    assert metrics["test"]["samples"] == 30 and metrics["train"]["examples"] == 48
    wrong = pd.read_csv(run / "report" / "misclassified.csv")
    assert set(wrong["text"]) <= set(test["text"])
    assert metrics["test"]["accuracy"] == pytest.approx(1 - len(wrong) / 30)  # the texts it got wrong, listed


# ---------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, flag", [
    ({"batch_size": 0}, "--batch-size"),
    ({"eval_batch_size": 0}, "--eval-batch-size"),
    ({"max_length": 0}, "--max-length"),
    ({"grad_accum": 0}, "--grad-accum"),
    ({"evals_per_epoch": 0}, "--evals-per-epoch"),
    ({"epochs": 0, "max_steps": -1}, "--epochs"),
    ({"max_train_samples": 1}, "--max-train-samples"),
    ({"max_eval_samples": 0}, "--max-eval-samples"),
    ({"warmup_fraction": 1.0}, "--warmup-fraction"),
    ({"validation_fraction": 0.0}, "--validation-fraction"),
    ({"validation_fraction": 1.0}, "--validation-fraction"),
    ({"learning_rate": 0.0}, "--learning-rate"),
    ({"early_stopping_patience": -1}, "--early-stopping-patience"),
    ({"refit": True, "early_stopping_patience": 0}, "--refit"),
    ({"class_weights": "balancd"}, "--class-weights"),
    ({"precision": "fp8"}, "--precision"),
])
def test_config_validation(overrides, flag):
    with pytest.raises(UserError) as info:
        TrainConfig(output_dir="unused", **overrides)
    assert flag in str(info.value) and "\n" not in str(info.value)


def test_sample_limits_follow_the_data_rule():
    # One rule for train's options and for load_splits' other callers (the benchmark): same message.
    with pytest.raises(UserError) as from_config:
        TrainConfig(output_dir="unused", max_train_samples=1)
    with pytest.raises(DataError) as from_data:
        load_splits("builtin:tweets", max_train_samples=1)
    assert str(from_config.value) == str(from_data.value) == "--max-train-samples must be at least 2, got 1"
    assert TrainConfig(output_dir="unused", max_train_samples=2, max_eval_samples=1).max_train_samples == 2


def test_config_accepts_max_steps_without_epochs():
    assert TrainConfig(output_dir="unused", epochs=0, max_steps=3).max_steps == 3


# ---------------------------------------------------------------------------------------------- evaluation order

def test_predict_probs_keeps_row_order(roberta_trained):
    # Trainer.predict with length-grouped sampling permutes rows; ours must not (regression test).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = roberta_trained / "run" / "model"
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForSequenceClassification.from_pretrained(model_dir)
    texts = ["a", "the film was a delight from start to finish and then some more", "my card", "terrible service",
             "how do I top up my account with a bank transfer today please", "ok"]
    batched = eager_probs(model, tokenizer, texts, max_length=64, batch_size=4, problem=SingleLabel())
    one_by_one = np.concatenate([eager_probs(model, tokenizer, [t], max_length=64, batch_size=1, problem=SingleLabel())
                                 for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_reported_accuracy_matches_the_saved_model(roberta_trained):
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = roberta_trained / "run"
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    test = pd.read_parquet(run / "data" / "test.parquet")
    labels = read_json(run / "run.json")["labels"]
    predicted = eager_probs(model, tokenizer, test["text"].tolist(), 64, 8, SingleLabel()).argmax(axis=1)
    accuracy = float(np.mean([labels[p] == y for p, y in zip(predicted, test["label"], strict=False)]))
    assert read_json(run / "metrics.json")["test"]["accuracy"] == pytest.approx(accuracy)


def test_temperature_is_fitted_on_validation_and_reported_whether_or_not_applied(roberta_trained):
    run = roberta_trained / "run"
    meta, config = read_json(run / "run.json"), read_json(run / "model" / "config.json")
    calibration = read_json(run / "metrics.json")["test"]["calibration"]
    assert calibration["temperature"] > 0 and calibration["bins"] == 15
    assert {"ece_before", "ece_after", "brier_before", "brier_after", "ece_served", "applied"} <= set(calibration)
    # A handful of validation rows cannot show out of fold that a temperature helps: none is applied or saved,
    # and the test split's ECE is still reported on both sides.
    assert not calibration["applied"] and "too few" in calibration["rule"]["rule"]
    assert meta["temperature"] is None and "calibration_temperature" not in config
    assert calibration["ece_served"] == calibration["ece_before"]
    assert (run / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_report_scales_the_test_probabilities_once(roberta_trained):
    """The report's "before" is the saved model at temperature 1 and "after" the same at the fitted
    temperature: each figure recomputed from the model must match (a second scaling would not)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.problems import rescale
    from training.report import calibration

    run = roberta_trained / "run"
    meta, reported = read_json(run / "run.json"), read_json(run / "metrics.json")["test"]["calibration"]
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    test = RunDir(run).read_test()
    raw = eager_probs(model, tokenizer, test["text"].tolist(), meta["max_length"], 16, SingleLabel())
    truth = [meta["labels"].index(label) for label in test["label"].astype(str)]
    assert calibration(truth, raw)["ece"] == pytest.approx(reported["ece_before"], abs=1e-5)
    assert calibration(truth, rescale(raw, reported["temperature"]))["ece"] == pytest.approx(reported["ece_after"], abs=1e-5)
