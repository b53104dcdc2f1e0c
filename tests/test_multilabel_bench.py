"""The multi-label benchmark's own logic on tiny synthetic data: the TF-IDF baseline, the targets and report,
results merging, config validation, and the plain recipe end to end on a tiny random model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench import multilabel_bench as mb
from textclf.core.errors import UserError
from textclf.core.options import parse_config
from training.rundir import RunDir
from training.scores import f1_scores

F1_KEYS = set(f1_scores(np.eye(2, dtype=int), np.eye(2, dtype=int)))
TOPICS = {"card": ["card", "arrived", "delivery"], "refund": ["refund", "money", "back"],
          "topup": ["top", "up", "transfer"]}


def _write_multilabel(folder, n_train=90, n_test=30, seed=0):
    """text,labels files where each label has its own words, texts carry 1-2 labels joined with '|'."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)

    def rows(n):
        out = []
        for _ in range(n):
            chosen = sorted(rng.choice(names, size=rng.integers(1, 3), replace=False))
            words = [w for name in chosen for w in rng.choice(TOPICS[name], size=2)] + ["please", "help"]
            out.append({"text": " ".join(rng.permutation(words)), "labels": "|".join(chosen)})
        return pd.DataFrame(out)

    folder.mkdir(parents=True, exist_ok=True)
    rows(n_train).to_csv(folder / "train.csv", index=False)
    rows(n_test).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def data_root(tmp_path):
    _write_multilabel(tmp_path / "data" / mb.DATASET)
    return tmp_path / "data"


def _row(micro, macro, subset, settings, **extra):
    test = {"micro_f1": micro, "macro_f1": macro, "samples_f1": micro, "subset_accuracy": subset,
            "hamming_loss": 0.01, "samples": 3000}
    machine = {"cpu_class": "avx512", "cpus": 2, "torch_threads": 1}
    return {"test": test, "settings": settings, "train_examples": 10000, "train_seconds": 100.0,
            "samples_per_second": 50.0, "epochs": 5.0, "max_train_samples": None, "run": {"machine": machine}, **extra}


def _results(ours_macro=0.90, ours_subset=0.70):
    by = {"0.5": {"micro_f1": 0.6, "macro_f1": 0.55, "subset_accuracy": 0.3},
          "0.3": {"micro_f1": 0.74, "macro_f1": 0.73, "subset_accuracy": 0.42},
          "0.2": {"micro_f1": 0.767, "macro_f1": 0.764, "subset_accuracy": 0.439}}
    return {"tfidf": _row(0.767, 0.764, 0.439, mb.TFIDF, threshold=0.2, by_threshold=by, epochs=None),
            "plain": _row(0.88, 0.87, 0.65, mb.PLAIN),
            "ours": _row(0.91, ours_macro, ours_subset, {**mb.OURS, "learning_rate": 2e-4, "class_weights": "none"})}


def test_load_binarizes_label_lists_with_train_labels(data_root):
    train_texts, train_y, test_texts, test_y, labels = mb.load(data_root / mb.DATASET)
    assert labels == sorted(TOPICS)
    assert train_y.shape == (90, 3) and test_y.shape == (30, 3)
    first = pd.read_csv(data_root / mb.DATASET / "train.csv").iloc[0]
    assert [labels[j] for j in np.flatnonzero(train_y[0])] == first["labels"].split("|")
    subset = mb.load(data_root / mb.DATASET, max_train_samples=10)
    assert len(subset[0]) == 10 and subset[4] == labels


def test_a_label_only_test_has_still_counts_on_test(tmp_path):
    folder = tmp_path / mb.DATASET
    folder.mkdir()
    pd.DataFrame({"text": ["a", "b"], "labels": ["card", "refund"]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text": ["c"], "labels": ["card|topup"]}).to_csv(folder / "test.csv", index=False)
    _, train_y, _, test_y, labels = mb.load(folder)
    assert labels == ["card", "refund", "topup"]
    assert train_y[:, 2].sum() == 0 and test_y.tolist() == [[1, 0, 1]]


def test_tfidf_keeps_the_best_threshold_by_macro_f1_and_reports_every_one(data_root):
    train_texts, train_y, test_texts, test_y, _ = mb.load(data_root / mb.DATASET)
    # 0.99 predicts (almost) nothing: it must never be the one kept
    row = mb.tfidf(train_texts, train_y, test_texts, test_y, thresholds=(0.99, 0.5, 0.3, 0.2))
    assert set(row["by_threshold"]) == {"0.99", "0.5", "0.3", "0.2"}
    best = max(row["by_threshold"].values(), key=lambda s: s["macro_f1"])
    assert row["test"] == best and row["threshold"] != 0.99
    assert set(row["test"]) == F1_KEYS
    assert row["test"]["micro_f1"] > 0.8  # each label has its own words: an easy set
    assert row["train_examples"] == 90 and row["samples_per_second"] > 0


def test_targets_met_and_not_met():
    met = {t["name"]: t for t in mb.targets(_results())}
    assert met["ours macro-F1 >= plain + 1 point"]["met"] and met["ours subset accuracy >= plain"]["met"]
    assert met[f"plain macro-F1 >= TF-IDF + {mb.FAR_POINTS} points"]["met"]
    assert met["ours macro-F1 >= plain + 1 point"]["detail"] == "+3.0 points"
    missed = {t["name"]: t for t in mb.targets(_results(ours_macro=0.875, ours_subset=0.64))}
    assert missed["ours macro-F1 >= plain + 1 point"]["met"] is False  # +0.5 points is not +1
    assert missed["ours subset accuracy >= plain"]["met"] is False


def test_targets_without_a_row_are_not_measured_rather_than_failed():
    results = _results()
    del results["ours"]
    out = {t["name"]: t["met"] for t in mb.targets(results)}
    assert out["ours macro-F1 >= plain + 1 point"] is None
    assert out[f"plain macro-F1 >= TF-IDF + {mb.FAR_POINTS} points"] is True
    assert "| ours macro-F1 >= plain + 1 point | not measured | not measured |" in mb.markdown(results)


def test_markdown_states_settings_targets_and_that_the_baseline_threshold_saw_test():
    report = mb.markdown(_results(ours_macro=0.875))
    assert "| tfidf | TF-IDF 1-2-grams" in report and "**picked on test**" in report
    assert "threshold 0.5, Trainer defaults, lr 0.0001, 5 epochs, batch 32" in report
    assert "up to 10 epochs (early stopping on validation macro-F1" in report
    assert "| 76.4 | 76.7 |" in report and "| 43.9% |" in report  # tfidf macro-F1, samples-F1, subset accuracy
    assert "| ours macro-F1 >= plain + 1 point | +0.5 points | not met |" in report
    assert "| ours subset accuracy >= plain | +5.0 points | **met** |" in report
    assert "0.5: micro-F1 60.0, macro-F1 55.0" in report
    assert "avx512, 2 CPUs, 1 torch threads" in report


def test_balanced_ours_gets_its_own_row_and_targets():
    balanced = {**mb.OURS, "learning_rate": 2e-4, "class_weights": "balanced"}
    results = {**_results(), "ours-balanced": _row(0.9, 0.9, 0.7, balanced)}
    names = [t["name"] for t in mb.targets(results)]
    assert "ours-balanced macro-F1 >= plain + 1 point" in names and "ours macro-F1 >= plain + 1 point" in names
    assert "class weights balanced" in mb.markdown(results)


def test_a_partial_run_keeps_the_other_rows_and_writes_smoke_files(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mb, "machine", lambda: {"cpu_class": "avx2", "cpus": 2, "torch_threads": 1})
    (tmp_path / "results").mkdir()
    kept = _results()["plain"]
    (tmp_path / "results" / "multilabel-smoke.json").write_text(json.dumps({"plain": kept}))
    results = mb.run_parts(data_root, tmp_path / "runs", ("a",), max_train_samples=60)
    assert set(results) == {"tfidf", "plain"} and results["plain"] == kept
    assert results["tfidf"]["train_examples"] == 60 and results["tfidf"]["settings"] == mb.TFIDF
    saved = json.loads((tmp_path / "results" / "multilabel-smoke.json").read_text())
    assert set(saved) == {"tfidf", "plain"}
    report = (tmp_path / "results" / "multilabel-smoke.md").read_text()
    assert "picked on test" in report and "Smoke run" in report
    assert not (tmp_path / "results" / "multilabel.json").exists()


def test_config_refuses_a_missing_data_root_in_one_line(tmp_path):
    with pytest.raises(UserError, match="benchmark data not found") as e:
        mb.MultilabelBenchConfig(data_root=tmp_path / "nowhere")
    assert "\n" not in str(e.value)


def test_config_parses_parts_and_refuses_unknown_ones(data_root):
    config = parse_config(mb.MultilabelBenchConfig, ["--data-root", str(data_root), "--parts", "c,a"])
    assert config.parts == ("a", "c")  # cheap recipes first, whatever the order given
    assert mb.MultilabelBenchConfig(data_root=data_root).parts == ("a", "b", "c")
    with pytest.raises(UserError, match="--parts"):
        mb.MultilabelBenchConfig(data_root=data_root, parts="a,d")
    with pytest.raises(SystemExit) as e:
        parse_config(mb.MultilabelBenchConfig, ["--data-root", str(data_root), "--parts", "x"])
    assert e.value.code == 2
    with pytest.raises(UserError, match="--threads"):
        mb.MultilabelBenchConfig(data_root=data_root, threads=0)


def test_plain_recipe_trains_with_bce_and_scores_with_f1_scores(tiny_distilbert_dir, tmp_path):
    from bench import plain_multilabel

    texts = ["my card has not arrived", "I want a refund", "card and refund please", "top up failed"] * 2
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 2)
    row = plain_multilabel.run(texts, y, texts, y, str(tiny_distilbert_dir), tmp_path / "plain", batch_size=4,
                               max_steps=2)
    assert set(row["test"]) == F1_KEYS and row["test"]["samples"] == 8
    assert row["train_examples"] == 8 and row["samples_per_second"] > 0


def test_ours_trains_through_training_train_with_the_multilabel_contract(tmp_path, monkeypatch):
    """Ours is the product's training entry point on the label column split at '|'; its metrics come back
    in the same row shape as the other recipes' (the real run is the benchmark itself)."""
    import training.train

    seen = {}
    test = {"micro_f1": 0.9, "macro_f1": 0.89, "samples_f1": 0.9, "subset_accuracy": 0.7, "hamming_loss": 0.003,
            "samples": 3000, "per_label": {}}
    train = {"seconds": 500.0, "samples_per_second": 80.0, "epochs": 7.0, "examples": 9000, "steps": 1970}
    said = "one shared decision threshold 0.30 for all 77 labels: ..."

    def fake_main(config):
        seen.update(config=config)
        run_dir = RunDir(config.output_dir)
        run_dir.path.mkdir(parents=True)
        run_dir.write_run({"labels": ["a", "b"], "max_length": 128, "thresholds_chosen": said,
                           "plan": {"learning_rate": 2e-4}})
        return {"test": test, "train": train}

    monkeypatch.setattr(training.train, "main", fake_main)
    row = mb.ours(tmp_path / mb.DATASET, tmp_path / "runs", None, class_weights="balanced")
    c = seen["config"]
    assert (c.label_column, c.label_separator, c.class_weights) == ("labels", "|", "balanced")
    # the product's defaults: no learning rate passed, the one the run used is recorded
    assert (c.learning_rate, c.epochs, c.batch_size, c.resume) == (None, 10, 32, False)
    assert row["learning_rate"] == 2e-4
    assert c.output_dir.endswith("banking77-multi-ours-balanced")
    assert row["test"] == {k: v for k, v in test.items() if k != "per_label"}
    assert (row["train_seconds"], row["samples_per_second"], row["epochs"], row["train_examples"]) == (500.0, 80.0, 7.0, 9000)
    assert row["thresholds_chosen"] == said
    text = mb.markdown({**_results(), "ours-balanced": {
        **_row(0.9, 0.9, 0.7, {**mb.OURS, "learning_rate": 2e-4, "class_weights": "balanced"}), "thresholds_chosen": said,
        "source": "another benchmark's run of the same settings"}})
    assert f"Decision thresholds of ours-balanced: {said}." in text
    assert "Row ours-balanced is another benchmark's run of the same settings." in text
