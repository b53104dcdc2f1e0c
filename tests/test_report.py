"""training.report on hand-made predictions whose metrics are worked out by hand below."""
from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest

from training.report import headline, label_rows, top_confusions, write_report

LABELS = ["cat", "dog", "fox"]
# Truth and prediction per row; confidences of the predicted class (the rest split evenly).
ROWS = [  # (true, predicted, confidence)
    (0, 0, 0.5), (0, 0, 0.5), (0, 2, 0.9), (0, 2, 0.6),          # cat: 2 right, 2 -> fox
    (1, 1, 0.5), (1, 1, 0.5), (1, 1, 0.5),                       # dog: all right
    (2, 2, 0.5), (2, 1, 0.7), (2, 1, 0.55), (2, 1, 0.8), (2, 0, 0.95),  # fox: 1 right, 3 -> dog, 1 -> cat
]
# Confusion matrix (rows true, columns predicted):
#   cat [2 0 2]   dog [0 3 0]   fox [1 3 1]
# precision: cat 2/3, dog 3/6, fox 1/3;  recall: cat 2/4, dog 3/3, fox 1/5
# F1: cat 4/7, dog 2/3, fox 1/4  ->  macro-F1 = (4/7 + 2/3 + 1/4) / 3 = 125/252
CM = [[2, 0, 2], [0, 3, 0], [1, 3, 1]]


def probabilities(rows, n_labels):
    probs = np.zeros((len(rows), n_labels))
    for i, (_, predicted, confidence) in enumerate(rows):
        probs[i] = (1 - confidence) / (n_labels - 1)
        probs[i, predicted] = confidence
    return probs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    texts = [f"t{i}" for i in range(len(ROWS))]
    metrics = write_report(out, LABELS, texts, [t for t, _, _ in ROWS], probabilities(ROWS, 3))
    return out, metrics


def test_headline_metrics_are_exact(report):
    _, metrics = report
    assert metrics["accuracy"] == pytest.approx(6 / 12)
    assert metrics["macro_f1"] == pytest.approx(125 / 252)
    assert metrics["samples"] == 12


def test_per_class_results(report):
    per_class = report[1]["per_class"]
    expected = {"cat": (2 / 3, 1 / 2, 4 / 7, 4), "dog": (1 / 2, 1.0, 2 / 3, 3), "fox": (1 / 3, 1 / 5, 1 / 4, 5)}
    for name, (precision, recall, f1, support) in expected.items():
        got = per_class[name]
        assert (got["precision"], got["recall"], got["f1-score"], got["support"]) == pytest.approx(
            (precision, recall, f1, support)), name
    assert per_class["macro avg"]["f1-score"] == pytest.approx(125 / 252)
    assert list(label_rows(per_class)) == LABELS  # accuracy and the averages are not labels


def test_confusion_matrix_csv(report):
    out, _ = report
    frame = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert list(frame.index) == LABELS and list(frame.columns) == LABELS
    assert frame.to_numpy().tolist() == CM


def test_top_confusions_most_frequent_first(report):
    assert report[1]["top_confusions"] == [
        {"true": "fox", "predicted": "dog", "count": 3},
        {"true": "cat", "predicted": "fox", "count": 2},
        {"true": "fox", "predicted": "cat", "count": 1},
    ]


def test_top_confusions_limit_and_no_diagonal():
    cm = np.array([[50, 4, 1], [2, 40, 3], [0, 5, 60]])
    pairs = top_confusions(cm, LABELS, k=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("fox", "dog", 5), ("cat", "dog", 4)]
    assert top_confusions(np.diag([3, 4, 5]), LABELS) == []


def test_misclassified_sorted_by_confidence(report):
    out, _ = report
    wrong = pd.read_csv(out / "misclassified.csv")
    assert wrong.to_dict("records") == [
        {"text": "t11", "true": "fox", "predicted": "cat", "confidence": 0.95},
        {"text": "t2", "true": "cat", "predicted": "fox", "confidence": 0.9},
        {"text": "t10", "true": "fox", "predicted": "dog", "confidence": 0.8},
        {"text": "t8", "true": "fox", "predicted": "dog", "confidence": 0.7},
        {"text": "t3", "true": "cat", "predicted": "fox", "confidence": 0.6},
        {"text": "t9", "true": "fox", "predicted": "dog", "confidence": 0.55},
    ]


def test_report_json_and_png(report):
    out, metrics = report
    assert json.loads((out / "report.json").read_text()) == metrics
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_mistakes(tmp_path):
    rows = [(0, 0, 0.9), (1, 1, 0.8), (2, 2, 0.7)]
    metrics = write_report(tmp_path, LABELS, ["a", "b", "c"], [0, 1, 2], probabilities(rows, 3))
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["top_confusions"] == []
    wrong = pd.read_csv(tmp_path / "misclassified.csv")
    assert list(wrong.columns) == ["text", "true", "predicted", "confidence"] and len(wrong) == 0


def test_headline_only_counts():
    expected = {"accuracy": 0.75, "macro_f1": pytest.approx((1 + 2 / 3 + 2 / 3) / 3), "samples": 4}
    assert headline([0, 1, 1, 2], [0, 1, 2, 2]) == expected


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_for_77_labels_scales_with_the_label_count(tmp_path):
    rng = np.random.default_rng(0)
    labels = [f"intent_{i:02d}" for i in range(77)]
    y_true = rng.integers(0, 77, 300)
    probs = rng.dirichlet(np.ones(77), 300)
    metrics = write_report(tmp_path / "many", labels, [f"text {i}" for i in range(300)], y_true, probs)
    assert pd.read_csv(tmp_path / "many" / "confusion_matrix.csv", index_col=0).shape == (77, 77)
    assert set(labels) <= set(metrics["per_class"])
    many = png_size(tmp_path / "many" / "confusion_matrix.png")
    right = probabilities([(0, 0, 0.9), (1, 1, 0.9), (2, 2, 0.9)], 3)
    write_report(tmp_path / "few", LABELS, ["a", "b", "c"], [0, 1, 2], right)
    few = png_size(tmp_path / "few" / "confusion_matrix.png")
    # The figure grows with the label count, so 77 tick labels get room (about 30 px per row here).
    assert many[0] > 2 * few[0] and many[0] / 77 >= 25
