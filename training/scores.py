"""The scores every report, gate and threshold rule reads: accuracy and macro-F1 of single-label decisions, and
the multi-label F1 family. Pure functions of true and predicted labels."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss


def headline(y_true, y_pred) -> dict:
    """Accuracy and macro-F1 of single-label decisions (label ids)."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "samples": int(len(y_true)),
    }


def label_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 per label of 0/1 matrices [texts, labels]; a label never true nor predicted scores 0, as in
    scikit-learn."""
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    tp = (y_true & y_pred).sum(axis=0)
    return 2 * tp / np.maximum(y_true.sum(axis=0) + y_pred.sum(axis=0), 1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-label F1 of 0/1 matrices [texts, labels]."""
    return float(np.mean(label_f1(y_true, y_pred)))


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """micro-, macro- and samples-F1, subset accuracy and Hamming loss of 0/1 matrices [texts, labels]
    (the data layer guarantees at least two labels). Macro-F1 is `macro_f1`, the score the thresholds
    are chosen by."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": macro_f1(y_true, y_pred),
        # A text with no labels that is given none counts as a perfect 1 (scikit-learn would say 0).
        "samples_f1": float(np.mean([1.0 if not t.any() and not p.any() else
                                     2 * (t & p).sum() / (t.sum() + p.sum()) for t, p in zip(y_true, y_pred, strict=True)])),
        "subset_accuracy": float((y_true == y_pred).all(axis=1).mean()),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "samples": int(len(y_true)),
    }
