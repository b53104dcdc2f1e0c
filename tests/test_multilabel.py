"""Multi-label end to end on a tiny random model: training (BCE with pos_weight, thresholds tuned on
validation), the report, the summary, export and the handler on the exported bundle."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from training.data import label_matrix, load_splits
from training.tiny import CORPUS

LABELS = ["billing", "card", "refund"]


def write_multilabel_data(folder: Path) -> Path:
    """train.csv / test.csv with `|`-joined labels, some rows with two labels and some with none."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = ["billing", "card", "refund", "billing|refund", "card|refund", "", "billing", "card"]

    def rows(n: int, offset: int) -> pd.DataFrame:
        return pd.DataFrame({"text": [f"{CORPUS[i % 8]} {offset + i}" for i in range(n)],
                             "labels": [sets[i % len(sets)] for i in range(n)]})

    rows(48, 0).to_csv(folder / "train.csv", index=False)
    rows(16, 10_000).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_distilbert_dir):
    import torch

    from training.train import TrainConfig, main

    base = tmp_path_factory.mktemp("multilabel")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = main(TrainConfig(output_dir=str(base / "run"), data=str(write_multilabel_data(base / "data")),
                                   model=str(tiny_distilbert_dir), label_column="labels", label_separator="|",
                                   class_weights="balanced", max_steps=4, batch_size=8, max_length=32,
                                   progress=False))
    finally:
        torch.set_num_threads(before)
    return base / "run", metrics


def test_run_records_the_problem_type_thresholds_and_pos_weight(multilabel_run):
    run, metrics = multilabel_run
    config = json.loads((run / "model" / "config.json").read_text())
    meta = json.loads((run / "run.json").read_text())
    assert config["problem_type"] == meta["problem_type"] == metrics["problem_type"] == "multi_label_classification"
    assert config["label_thresholds"] == meta["thresholds"] and len(meta["thresholds"]) == len(LABELS)
    assert all(0 < t < 1 for t in meta["thresholds"])
    assert "out of" in meta["thresholds_chosen"] and "validation" in meta["thresholds_chosen"]
    assert meta["labels"] == LABELS
    # pos_weight = negatives / positives per label, over the training rows actually used (validation carved).
    splits = load_splits(str(run.parent / "data"), label_column="labels", label_separator="|",
                         seed=meta["config"]["seed"])
    targets = label_matrix(splits.train, LABELS)
    positives = targets.sum(axis=0)
    assert meta["class_weights"] == pytest.approx(((len(targets) - positives) / positives).tolist())


def test_report_and_summary(multilabel_run):
    from training.summary import summary

    run, metrics = multilabel_run
    test = metrics["test"]
    assert test["samples"] == 16 and set(LABELS) <= set(test["per_class"])
    counts = pd.read_csv(run / "report" / "label_confusion.csv")
    assert counts["label"].tolist() == LABELS and (counts[["tp", "fp", "fn", "tn"]].sum(axis=1) == 16).all()
    assert (run / "report" / "label_errors.png").read_bytes()[:4] == b"\x89PNG"
    wrong = pd.read_csv(run / "report" / "misclassified.csv", keep_default_na=False)
    assert list(wrong.columns) == ["text", "true", "predicted", "missing", "extra", "errors"]
    # The headline figures, recomputed by hand from the per-label counts and the imperfect texts of the report.
    tp, fp, fn = (counts[c].to_numpy() for c in ("tp", "fp", "fn"))
    assert test["micro_f1"] == pytest.approx(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))
    assert test["macro_f1"] == pytest.approx(sum(2 * t / max(2 * t + p + n, 1) for t, p, n in zip(tp, fp, fn, strict=True)) / 3)
    assert test["hamming_loss"] == pytest.approx((fp.sum() + fn.sum()) / (16 * len(LABELS)))
    assert test["subset_accuracy"] == pytest.approx(1 - len(wrong) / 16)
    labels_of = lambda names: set(filter(None, names.split("|")))  # noqa: E731
    imperfect = [2 * len(labels_of(t) & labels_of(p)) / (len(labels_of(t)) + len(labels_of(p)))
                 for t, p in zip(wrong["true"], wrong["predicted"], strict=True)]
    assert test["samples_f1"] == pytest.approx((16 - len(wrong) + sum(imperfect)) / 16)  # a perfect text scores 1
    text = summary(run)
    assert "micro-F1" in text and "subset accuracy" in text and "label_errors.png" in text
    rows = text.splitlines()
    start = next(i for i, line in enumerate(rows) if line.startswith("label "))
    assert [row.split()[0] for row in rows[start + 1: start + 1 + len(LABELS)]] == LABELS
    assert not any(row.startswith("samples avg") for row in rows)  # scikit-learn's average, not a label


def test_export_carries_problem_type_and_thresholds_and_the_handler_answers_label_sets(multilabel_run, tmp_path):
    from handlers import bundle
    from tests.test_handler import body, make_handler
    from tests.test_handler import run as run_batch
    from training.export import ExportConfig, main

    run, _ = multilabel_run
    results = main(ExportConfig(run_dir=str(run), output_dir=str(tmp_path / "export"), allow_weak=True))
    assert set(results) == {"fp32", "micro_f1_drop_points"} and "subset_accuracy" in results["fp32"]["test"]
    card = bundle.check(tmp_path / "export")
    thresholds = json.loads((run / "run.json").read_text())["thresholds"]
    assert card.problem_type == "multi_label_classification" and list(card.thresholds) == thresholds
    assert card.raw["problem_type"] == "multi_label_classification"
    assert card.raw["out_of_scope"]["kind"] == "mahalanobis"
    # Label sets as the thresholds decide them: out-of-scope detection off (a tiny model's detector may reject any
    # text, answering an empty set; tests/test_out_of_scope.py covers that path).
    handler = make_handler(tmp_path / "export", {"out_of_scope": False})
    [(status, _, answer)] = run_batch(handler, [body("my card has not arrived yet")])
    assert status == 200 and set(answer["scores"]) == set(LABELS)
    # The label set is every label at or above its own threshold, from the run's config.json.
    chosen = [name for name, t in zip(LABELS, thresholds, strict=False) if answer["scores"][name] >= t]
    assert sorted(answer["labels"]) == sorted(chosen)
