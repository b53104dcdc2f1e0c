"""Evaluation report on a labelled split: headline metrics, per-class results, confusion matrix
(CSV in full; a PNG that stays readable at 77 classes), the most confused pairs, and the most
confident mistakes. Pure functions of (labels, true ids, probabilities) so export can reuse the
metrics, plus `predict_probs`, the one loop that turns a model and texts into those probabilities
for training and export alike."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix, multilabel_confusion_matrix

from training.scores import f1_scores, headline

# Above this many labels the PNG shows only the most confused ones: 77 rows of tick labels and cells
# cannot be read at any figure size that fits a screen. The CSV always holds the full matrix.
MAX_PLOTTED_LABELS = 25
# Label names longer than this are cut with an ellipsis in the PNG and the printed summary.
MAX_LABEL_WIDTH = 40


def predict_probs(forward: Callable, tokenizer, texts: list[str], max_length: int, batch_size: int,
                  device="cpu", activation: Callable | None = None, policy=None) -> np.ndarray:
    """Probabilities [len(texts), labels] in the order of `texts` (predict_outputs without the features)."""
    return predict_outputs(forward, tokenizer, texts, max_length, batch_size, device, activation, policy)[0]


def predict_outputs(forward: Callable, tokenizer, texts: list[str], max_length: int, batch_size: int,
                    device="cpu", activation: Callable | None = None,
                    policy=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities [len(texts), labels] and features [len(texts), width] (None where `forward` returns logits
    alone) in the order of `texts`; `forward(input_ids, attention_mask)` returns logits or (logits, features)
    (an eager model wrapped in a lambda or training.features.with_features, or an exported module); `activation`
    turns logits into probabilities (a problem type's `probabilities`; default: softmax).

    `policy`: the run's long-text policy (handlers/long_texts.py; default truncate), as serving applies it: each
    batch of `batch_size` texts is encoded by it, all their rows (windows) go through one forward pass, and a
    text's logits are the policy's aggregate of its rows'. Its features are the mean of its rows' (serving's
    out-of-scope score instead takes the max of the per-window in_scope scores: a text is in scope when any
    of its windows is).

    Not `Trainer.predict`: with length-grouped sampling, transformers 5 also permutes evaluation
    batches, so its predictions do not line up with the input rows. Batches here are length-sorted
    for speed and written back to their rows, tokenized by the same function serving uses.
    """
    import torch  # imported here: training.summary reads reports without torch

    from handlers.answers import softmax  # imported here: they import torch, which training.summary does without
    from handlers.batching import split_outputs  # imported here: see above
    from handlers.long_texts import Truncate, reduce_rows  # imported here: see above

    policy = policy or Truncate()
    order = np.argsort([len(t) for t in texts], kind="stable")
    probs = features = None
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            enc = policy.encode(tokenizer, [texts[j] for j in idx], max_length)
            logits, feats = split_outputs(forward(enc.input_ids.to(device), enc.attention_mask.to(device)))
            logits = policy.aggregate(logits, enc.owners, len(idx))  # one row per text: unchanged, bit for bit
            feats = None if feats is None else reduce_rows(feats, enc.owners, len(idx), "mean")
            if probs is None:
                probs = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
                features = None if feats is None else np.zeros((len(texts), feats.shape[-1]), dtype=np.float32)
            probs[idx] = (activation or softmax)(logits.float()).cpu().numpy()
            if features is not None:
                features[idx] = feats.float().cpu().numpy()
    if probs is None:
        raise ValueError("predict_probs needs at least one text")
    return probs, features


def shorten(name: str, width: int = MAX_LABEL_WIDTH) -> str:
    """`name` cut to `width` characters, the last one an ellipsis when something was cut."""
    return name if len(name) <= width else name[: width - 1] + "…"


def label_rows(per_class: dict) -> dict:
    """The per-label rows of a scikit-learn classification report: without accuracy and the averages."""
    # The averages: macro, weighted, micro and (multi-label) samples avg.
    return {k: v for k, v in per_class.items() if isinstance(v, dict) and "support" in v and not k.endswith(" avg")}


def top_confusions(matrix: np.ndarray, labels: list[str], k: int = 10, names=("true", "predicted")) -> list[dict]:
    """The k largest off-diagonal counts of a label x label matrix, as {names[0], names[1], "count"}."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    first, second = names
    return [{first: labels[a], second: labels[b], "count": int(off[a, b])} for a, b in pairs if off[a, b] > 0]


def most_confused(cm: np.ndarray, k: int) -> list[int]:
    """Indices of the `k` labels with the most mistakes, made or received (off-diagonal row + column
    sums), in label order; ties go to the earlier label."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    mistakes = off.sum(axis=0) + off.sum(axis=1)
    return sorted(np.argsort(-mistakes, kind="stable")[:k].tolist())


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> list[str]:
    """Write the PNG; return the labels it shows (all of them, or the MAX_PLOTTED_LABELS most confused),
    as printed on its axes."""
    import matplotlib  # imported here: only plots need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: only plots need matplotlib
    from matplotlib.colors import PowerNorm  # imported here: only plots need matplotlib

    # Row-normalised over all labels, so rare classes are as visible as frequent ones and a cell means
    # "share of this class's texts" even when only some columns are shown.
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    shown = list(range(len(labels)))
    title = "confusion matrix (row-normalised)"
    if len(labels) > MAX_PLOTTED_LABELS:
        shown = most_confused(cm, MAX_PLOTTED_LABELS)
        title = (f"the {len(shown)} most confused of {len(labels)} labels (row-normalised)\n"
                 f"full matrix: confusion_matrix.csv")
    norm = norm[np.ix_(shown, shown)]
    names = [shorten(labels[i]) for i in shown]
    n = len(names)
    fig, ax = plt.subplots(figsize=(4 + 0.32 * n, 4 + 0.32 * n))
    # A square-root colour scale: mistakes of a few percent show as colour next to a dark diagonal.
    im = ax.imshow(norm, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    font = 10 if n <= 10 else 8
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.005 or n <= 10:  # blank zeros keep a large matrix's mistakes easy to spot
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if norm[i, j] > 0.3 else "black")
    fig.colorbar(im, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return names


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


# ---------------------------------------------------------------------------------------------- multi-label

def write_multilabel_report(out_dir: Path, labels: list[str], texts: list[str], y_true, probs: np.ndarray,
                            y_pred: np.ndarray) -> dict:
    """The multi-label report: micro/macro/samples-F1, subset accuracy, Hamming loss, per-label results,
    per-label confusion counts (CSV in full, PNG of the labels with most errors), the label pairs most often
    confused (one missed where the other was predicted) or missed together, and every imperfect text with
    its missing and extra labels."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    metrics = f1_scores(y_true, y_pred)
    metrics["per_class"] = classification_report(y_true, y_pred, target_names=labels, output_dict=True,
                                                 zero_division=0)
    counts = multilabel_confusion_matrix(y_true, y_pred)  # [label, 2, 2]: [[tn, fp], [fn, tp]]
    table = pd.DataFrame({"label": labels, "tp": counts[:, 1, 1], "fp": counts[:, 0, 1], "fn": counts[:, 1, 0],
                          "tn": counts[:, 0, 0]})
    table.to_csv(out_dir / "label_confusion.csv", index=False)
    plot_label_errors(table, out_dir / "label_errors.png")
    missed, extra = (y_true == 1) & (y_pred == 0), (y_true == 0) & (y_pred == 1)
    metrics["top_confusions"] = top_confusions(missed.T.astype(int) @ extra.astype(int), labels)
    together = missed.T.astype(int) @ missed.astype(int)
    metrics["missed_together"] = top_confusions(np.triu(together, k=1), labels, names=("first", "second"))
    wrong = np.nonzero((y_true != y_pred).any(axis=1))[0]
    names = lambda row: "|".join(labels[j] for j in np.nonzero(row)[0])  # noqa: E731
    mistakes = pd.DataFrame({
        "text": [texts[i] for i in wrong], "true": [names(y_true[i]) for i in wrong],
        "predicted": [names(y_pred[i]) for i in wrong], "missing": [names(missed[i]) for i in wrong],
        "extra": [names(extra[i]) for i in wrong], "errors": [int(missed[i].sum() + extra[i].sum()) for i in wrong],
    }).sort_values("errors", ascending=False, kind="stable")
    mistakes.to_csv(out_dir / "misclassified.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def plot_label_errors(table: pd.DataFrame, path: Path) -> list[str]:
    """Missed (false negative) and extra (false positive) predictions per label, as horizontal bars, for the
    MAX_PLOTTED_LABELS labels with most errors: one readable row per label even at 77 labels."""
    import matplotlib  # imported here: only plots need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: only plots need matplotlib

    errors = table["fn"] + table["fp"]
    shown = table.assign(errors=errors).sort_values("errors", ascending=False, kind="stable").head(MAX_PLOTTED_LABELS)
    shown = shown.iloc[::-1]  # most errors at the top
    names = [shorten(name) for name in shown["label"]]
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.3 * len(shown)))
    ax.barh(names, shown["fn"], color="#d62728", label="missed (false negatives)")
    ax.barh(names, shown["fp"], left=shown["fn"], color="#1f77b4", label="extra (false positives)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("texts")
    what = f"the {len(shown)} labels with most errors of {len(table)}" if len(table) > len(shown) else "errors per label"
    ax.set_title(f"{what} (test split)\nfull counts: label_confusion.csv", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return names


# ---------------------------------------------------------------------------------------------- calibration

CALIBRATION_BINS = 15


def calibration(y_true, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error (top-1 confidence in `bins` equal-width bins, weighted by their share of
    texts) and the multi-class Brier score (mean squared distance to the one-hot truth)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
              for b in range(bins) if (which == b).any())
    onehot = np.eye(probs.shape[1])[y_true]
    return {"ece": float(ece), "brier": float(((probs - onehot) ** 2).sum(axis=1).mean())}


def write_calibration(out_dir: Path, y_true, before: np.ndarray, after: np.ndarray, temperature: float,
                      decision: dict | None = None) -> dict:
    """ECE and Brier score without (`before`) and with (`after`) the fitted temperature, and reliability.png
    with both curves. `decision`: training.problems.choose_temperature's, which says whether the temperature
    is applied (without one, it is); the figures on both sides are reported either way, so a report shows
    what the rule turned down as well as what it kept."""
    if (np.asarray(before).argmax(axis=1) != np.asarray(after).argmax(axis=1)).any():
        raise RuntimeError("temperature scaling changed a decision; it must only change confidences")
    applied = True if decision is None else bool(decision["applied"])
    b, a = calibration(y_true, before), calibration(y_true, after)
    curves = {"without temperature" + ("" if applied else " (served)"): before,
              f"T = {temperature:.2f} " + ("(served)" if applied else "(not applied)"): after}
    plot_reliability(np.asarray(y_true), curves, Path(out_dir) / "reliability.png")
    return {"temperature": temperature, "applied": applied, "bins": CALIBRATION_BINS,
            "ece_before": b["ece"], "ece_after": a["ece"], "brier_before": b["brier"], "brier_after": a["brier"],
            "ece_served": (a if applied else b)["ece"],
            **({"rule": {k: v for k, v in decision.items() if k not in ("temperature", "applied")}} if decision else {})}


def plot_reliability(y_true: np.ndarray, curves: dict, path: Path, bins: int = CALIBRATION_BINS) -> None:
    import matplotlib  # imported here: only plots need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: only plots need matplotlib

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, probs in curves.items():
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
        which = np.minimum((confidence * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        ax.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used],
                marker="o", label=name)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability on the test split ({bins} bins)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
