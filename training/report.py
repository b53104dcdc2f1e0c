"""Evaluation report on a labelled split: headline metrics, per-class results, confusion matrix
(CSV + PNG that stays readable at 77 classes), the most confused pairs, and the most confident
mistakes. Pure functions of (labels, true ids, probabilities) so export can reuse the metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def headline(y_true, y_pred) -> dict:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "samples": int(len(y_true)),
    }


def label_rows(per_class: dict) -> dict:
    """The per-label rows of a scikit-learn classification report: without accuracy and the averages."""
    return {k: v for k, v in per_class.items() if isinstance(v, dict) and "support" in v
            and k not in ("macro avg", "weighted avg", "micro avg")}


def top_confusions(cm: np.ndarray, labels: list[str], k: int = 10) -> list[dict]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [{"true": labels[t], "predicted": labels[p], "count": int(off[t, p])} for t, p in pairs if off[t, p] > 0]


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Row-normalised so rare classes are as visible as frequent ones; annotate only when it stays legible.
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = min(4 + 0.28 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    font = max(4, 11 - n // 10)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, fraction=0.046, pad=0.04)
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, labels: list[str], texts: list[str], y_true, probs: np.ndarray) -> dict:
    """Write the error-analysis files into out_dir and return the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    metrics = headline(y_true, y_pred)
    metrics["per_class"] = classification_report(y_true, y_pred, labels=ids, target_names=labels,
                                                 output_dict=True, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=ids)
    metrics["top_confusions"] = top_confusions(cm, labels)
    pd.DataFrame(cm, index=labels, columns=labels).to_csv(out_dir / "confusion_matrix.csv")
    plot_confusion(cm, labels, out_dir / "confusion_matrix.png")
    wrong = np.nonzero(y_pred != y_true)[0]
    confidence = probs[np.arange(len(y_pred)), y_pred]
    mistakes = pd.DataFrame({
        "text": [texts[i] for i in wrong],
        "true": [labels[y_true[i]] for i in wrong],
        "predicted": [labels[y_pred[i]] for i in wrong],
        "confidence": confidence[wrong].round(4),
    }).sort_values("confidence", ascending=False)
    mistakes.to_csv(out_dir / "misclassified.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
