"""Fit and evaluate the out-of-scope detector at the end of training (serving: handlers/out_of_scope.py).

    fit        class means and one shared covariance on the training texts' features (mahalanobis), the sorted
               raw scores of the in-scope validation texts (the `in_scope` scale), and the threshold:
                 - with out-of-scope examples in validation (--out-of-scope-label): the threshold that maximises
                   in-scope accuracy (a rejected in-scope text counts as wrong) + out-of-scope recall
                 - without: the one that keeps --in-scope-coverage of the in-scope validation texts
    evaluate   on the test split, the figures of Larson et al. (2019): in-scope accuracy and out-of-scope recall,
               with precision, AUROC and the false-positive rate at 95% in-scope recall where it has
               out-of-scope texts; the share answered out of scope where it has none
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from handlers.out_of_scope import KINDS, NEEDS_FEATURES, Detector, raw_scores, tail_share

log = logging.getLogger(__name__)
# Shrinkage of the shared covariance towards its mean variance: a 384-wide covariance from a few thousand
# texts has near-zero eigenvalues whose inverse would dominate every distance (Ledoit-Wolf's reasoning).
SHRINKAGE = 0.1


@dataclass
class Texts:
    """One split as the detector sees it: served probabilities, features (or None), and what is known of the
    truth. `in_scope`: which texts belong to a label; `correct`: which texts the model answers right, before any
    rejection (false for out-of-scope texts)."""

    probs: np.ndarray
    features: np.ndarray | None
    in_scope: np.ndarray
    correct: np.ndarray
    decided_oos: np.ndarray  # the model's own answer is the out-of-scope class (always false without one)


def texts_of(problem, probs: np.ndarray, features: np.ndarray | None, targets: np.ndarray, oos_class: int | None,
             extra_out_of_scope: int = 0) -> Texts:
    """A labelled split as the detector sees it: `probs` and `features` of its texts in order, then of
    `extra_out_of_scope` more texts known to fit no label (a benchmark's; they are never answered right)."""
    decided, n = problem.decide(probs), len(targets)
    correct = decided[:n] == targets if np.ndim(targets) == 1 else (decided[:n] == targets).all(axis=1)
    extra = np.ones(extra_out_of_scope, dtype=bool)
    return Texts(probs, features, ~np.concatenate([decided_oos(targets, oos_class), extra]),
                 np.concatenate([correct, ~extra]), decided_oos(decided, oos_class))


def decided_oos(decided: np.ndarray, oos_class: int | None) -> np.ndarray:
    """Which texts the model's own decisions (ids, or a 0/1 matrix) give the out-of-scope class."""
    decided = np.asarray(decided)
    if oos_class is None:
        return np.zeros(len(decided), dtype=bool)
    return decided == oos_class if decided.ndim == 1 else decided[:, oos_class] == 1


def class_groups(targets: np.ndarray, in_scope_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices per in-scope label: single-label ids, or a multi-label 0/1 matrix (a text counts under each of
    its labels; texts with none form one more group: "no label" is an answer those models give)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return [np.nonzero(targets == c)[0] for c in in_scope_ids if (targets == c).any()]
    groups = [np.nonzero(targets[:, c])[0] for c in in_scope_ids if targets[:, c].any()]
    empty = np.nonzero(targets[:, in_scope_ids].sum(axis=1) == 0)[0]
    return groups + ([empty] if len(empty) else [])


def mahalanobis_arrays(features: np.ndarray, groups: list[np.ndarray]) -> dict:
    """`whiten` W and `centres` (class means times W) such that ||(x - mu) W||^2 is x's Mahalanobis distance to
    mu under the shared covariance of the classes' residuals."""
    features = np.asarray(features, dtype=np.float64)
    means = np.stack([features[g].mean(axis=0) for g in groups])
    residuals = np.concatenate([features[g] - m for g, m in zip(groups, means, strict=True)])
    cov = np.cov(residuals, rowvar=False)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    whiten = np.linalg.cholesky(np.linalg.inv(cov))  # inv(cov) = W W^T
    return {"whiten": whiten, "centres": means @ whiten}


def choose_threshold(in_scope: np.ndarray, split: Texts, coverage: float) -> tuple[float, str]:
    """The threshold on the in_scope scale, and one line saying which rule chose it."""
    oos = ~split.in_scope
    # --in-scope-coverage is the least share of in-scope texts kept, with or without examples: maximising
    # accuracy + recall alone weighs one out-of-scope text like one in-scope text, and on clinc150 it kept only
    # 92% of in-scope texts (4.7 points of in-scope accuracy for 92% recall; bench/results/out_of_scope.md),
    # where real traffic is mostly in scope. Examples then choose a threshold that keeps more, if that scores
    # higher. The floor also keeps the threshold below 1, which would answer every text out of scope.
    floor = round(1 - coverage, 4)
    if not oos.any():
        return floor, (f"no out-of-scope examples in validation: the threshold keeps {100 * coverage:g}% of in-scope "
                       "validation texts (--in-scope-coverage)")
    best, best_score = 0.0, -1.0
    for t in np.unique(np.concatenate([[0.0, floor], in_scope[in_scope <= floor]])):
        flagged = (in_scope < t) | split.decided_oos
        score = (split.correct & ~flagged)[split.in_scope].mean() + flagged[oos].mean()
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    kept = ((in_scope >= best) & ~split.decided_oos)[split.in_scope].mean()
    return round(best, 4), (f"chosen on validation's {int(oos.sum())} out-of-scope examples: it maximises in-scope "
                            f"accuracy + out-of-scope recall keeping at least {100 * coverage:g}% of in-scope "
                            f"validation texts (--in-scope-coverage; it keeps {100 * kept:.1f}%)")


def fit(kind: str, train_features: np.ndarray | None, train_targets: np.ndarray, validation: Texts,
        in_scope_ids: np.ndarray, oos_class: int | None, coverage: float) -> tuple[Detector, str]:
    """The detector of one run and the line saying how its threshold was chosen."""
    if kind not in KINDS:
        raise ValueError(f"unknown detector {kind!r}")
    arrays = {}
    if NEEDS_FEATURES[kind]:
        arrays = mahalanobis_arrays(train_features, class_groups(train_targets, in_scope_ids))
    raw = raw_scores(kind, validation.probs, validation.features, arrays, in_scope_ids)
    reference = np.sort(raw[validation.in_scope])
    if not len(reference):
        raise ValueError("the validation split has no in-scope texts to fit the out-of-scope detector on")
    in_scope = tail_share(raw, reference)
    threshold, rule = choose_threshold(in_scope, validation, coverage)
    return Detector(kind, threshold, reference, arrays, np.asarray(in_scope_ids), oos_class), rule


def evaluate(detector: Detector, split: Texts) -> dict:
    """The detector's figures on a split (percentages as fractions)."""
    in_scope = detector.in_scope(split.probs, split.features)
    flagged = (in_scope < detector.threshold) | split.decided_oos
    ins, oos = split.in_scope, ~split.in_scope
    out = {"texts": int(len(flagged)), "out_of_scope_share": float(flagged.mean()),
           "in_scope_kept": float((~flagged)[ins].mean()) if ins.any() else None,
           "in_scope_accuracy": float((split.correct & ~flagged)[ins].mean()) if ins.any() else None,
           "in_scope_accuracy_without_detection": float(split.correct[ins].mean()) if ins.any() else None}
    if oos.any() and ins.any():
        score = np.where(split.decided_oos, -1.0, in_scope)  # the class's own decision ranks first
        at_95 = np.quantile(score[ins], 0.05)  # keeps 95% of in-scope texts
        out.update(out_of_scope_texts=int(oos.sum()), out_of_scope_recall=float(flagged[oos].mean()),
                   out_of_scope_precision=float(flagged[oos].sum() / max(1, flagged.sum())),
                   auroc=float(roc_auc_score(oos, -score)), fpr_at_95_in_scope=float((score[oos] >= at_95).mean()))
    return out


def describe(figures: dict) -> str:
    if "out_of_scope_recall" in figures:
        return (f"in-scope accuracy {100 * figures['in_scope_accuracy']:.1f}% (without detection "
                f"{100 * figures['in_scope_accuracy_without_detection']:.1f}%), out-of-scope recall "
                f"{100 * figures['out_of_scope_recall']:.1f}%, precision {100 * figures['out_of_scope_precision']:.1f}%, "
                f"AUROC {figures['auroc']:.3f}")
    return (f"{100 * figures['out_of_scope_share']:.1f}% answered out of scope; in-scope accuracy "
            f"{100 * figures['in_scope_accuracy']:.1f}% (without detection "
            f"{100 * figures['in_scope_accuracy_without_detection']:.1f}%)")
