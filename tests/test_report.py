"""training.report on hand-made predictions whose metrics are worked out by hand below."""
from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest

from training import report as report_module
from training.report import MAX_PLOTTED_LABELS, label_rows, most_confused, plot_confusion, shorten, top_confusions, write_report
from training.scores import headline
from training.summary import summary

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


def confused_77(rng, confused: list[int], n: int = 2000):
    """Predictions for 77 labels: mostly right, except that `confused` labels swap among each other."""
    y_true = rng.integers(0, 77, n)
    y_pred = y_true.copy()
    for i in np.flatnonzero(np.isin(y_true, confused)):
        if rng.random() < 0.5:
            y_pred[i] = rng.choice(confused)
    probs = np.full((n, 77), 0.1 / 76)
    probs[np.arange(n), y_pred] = 0.9
    return y_true, probs


def test_png_for_77_labels_shows_the_most_confused_and_stays_small(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = [f"intent_{i:02d}" for i in range(77)]
    confused = list(range(40, 40 + MAX_PLOTTED_LABELS))
    y_true, probs = confused_77(rng, confused)
    plotted = []
    real_plot = report_module.plot_confusion
    monkeypatch.setattr(report_module, "plot_confusion", lambda *a: plotted.extend(real_plot(*a)))
    metrics = write_report(tmp_path / "many", labels, [f"text {i}" for i in range(len(y_true))], y_true, probs)
    assert pd.read_csv(tmp_path / "many" / "confusion_matrix.csv", index_col=0).shape == (77, 77)  # the CSV keeps all
    assert set(labels) <= set(metrics["per_class"])
    assert plotted == [labels[i] for i in confused]
    # 25 rows of tick labels at a readable size, not 2811 px of 77 illegible ones.
    width, height = png_size(tmp_path / "many" / "confusion_matrix.png")
    assert width == height and 900 <= width <= 1400


def test_png_for_few_labels_shows_them_all(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
    assert plot_confusion(cm, LABELS, tmp_path / "cm.png") == LABELS
    assert png_size(tmp_path / "cm.png")[0] < 900


def test_most_confused_counts_mistakes_made_and_received():
    cm = np.array([[9, 0, 0, 0], [0, 9, 0, 4], [0, 0, 9, 0], [1, 0, 2, 9]])
    # mistakes per label, made + received: 0 -> 1, 1 -> 4, 2 -> 2, 3 -> 7
    assert most_confused(cm, 2) == [1, 3]  # in label order
    assert most_confused(cm, 3) == [1, 2, 3]
    assert most_confused(np.diag([3, 4, 5]), 2) == [0, 1]  # no mistakes: ties go to the earlier labels


def test_long_label_names_are_cut_with_an_ellipsis():
    assert shorten("short") == "short"
    assert shorten("x" * 40) == "x" * 40
    assert shorten("x" * 41) == "x" * 39 + "…" and len(shorten("y" * 100)) == 40


# ---------------------------------------------------------------------------------------------- summary

def summary_of(tmp_path, labels: list[str]) -> list[str]:
    from training.rundir import RunDir

    rng = np.random.default_rng(1)
    y_true = np.arange(60) % len(labels)
    probs = rng.dirichlet(np.ones(len(labels)), 60)
    run = RunDir(tmp_path / "run")
    test = write_report(run.report_dir, labels, [f"t{i}" for i in range(60)], y_true, probs)
    run.write_metrics({"test": test, "validation": {"accuracy": 0.5, "macro_f1": 0.5, "samples": 10},
                       "train": {"examples": 100, "steps": 4, "seconds": 3.0, "samples_per_second": 33.3}})
    return summary(run.path).splitlines()


@pytest.mark.parametrize("labels", [
    ["neg", "pos"],
    # 32 and 48 characters: past the old fixed 24-character column, and past the 40-character cap.
    ["card_payment_wrong_exchange_rate", "balance_not_updated_after_cheque_or_cash_deposit", "age_limit"],
])
def test_summary_columns_line_up_for_any_label_length(tmp_path, labels):
    lines = summary_of(tmp_path, labels)
    start = next(i for i, line in enumerate(lines) if line.startswith("label "))
    rows = lines[start: start + 1 + len(labels)]
    width = max(len("label"), *(len(shorten(name)) for name in labels))
    assert len({len(row) for row in rows}) == 1  # the numeric columns end at the same place on every line
    assert all(row[width] == " " for row in rows) and rows[0][width:].startswith(" precision")
    assert [row[:width].rstrip() for row in rows[1:]] == [shorten(name) for name in labels]


def test_summary_of_an_unfinished_run_names_the_file(tmp_path):
    from training.rundir import RunDirError

    with pytest.raises(RunDirError, match=r"metrics\.json: missing; is .* a finished training run"):
        summary(tmp_path)
