"""How logits become an answer: the one place where single-label and multi-label serving differ.

    single_label_classification  softmax of the logits divided by the bundle's temperature (calibrated
                                 confidences); {"label", "score", "scores"}: the best label and the top_k scores
    multi_label_classification   a sigmoid per label; {"labels": [every label at or above its threshold, best
                                 first; possibly none], "label", "score", "scores"}: `label`/`score` stay the
                                 highest-scoring label, for clients written against single-label models

The bundle says which (config.json `problem_type`, and `label_thresholds` for multi-label: bundle.check);
the training side's twin is training/problems.py.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from handlers.bundle import MULTI


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Single-label probabilities; training, export and the report call this one too."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Multi-label probabilities, one per label; training, export and the report call this one too."""
    return torch.sigmoid(logits.float())


def _ranked(probs: Sequence[float], labels: Sequence[str], top_k: int | None) -> dict:
    ranked = sorted(zip(labels, probs, strict=True), key=lambda pair: pair[1], reverse=True)
    return {"label": ranked[0][0], "score": ranked[0][1], "scores": dict(ranked[: top_k or len(labels)])}


class SingleLabelAnswers:
    def __init__(self, labels: Sequence[str], temperature: float = 1.0):
        self.labels, self.temperature = list(labels), temperature

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated: the temperature fitted on validation divides the logits (the argmax stays the same)."""
        return softmax(logits, self.temperature)

    def answer(self, probs: Sequence[float], top_k: int | None) -> dict:
        """`scores` holds the top_k best labels (all if None), best first."""
        return _ranked(probs, self.labels, top_k)


class MultiLabelAnswers:
    def __init__(self, labels: Sequence[str], thresholds: Sequence[float]):
        self.labels, self.thresholds = list(labels), list(thresholds)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return sigmoid(logits)

    def answer(self, probs: Sequence[float], top_k: int | None) -> dict:
        """`labels` is the decision and is never cut by top_k; top_k limits `scores` only."""
        chosen = sorted((p, name) for name, p, t in zip(self.labels, probs, self.thresholds, strict=True) if p >= t)
        return {"labels": [name for _, name in reversed(chosen)], **_ranked(probs, self.labels, top_k)}


def answers_for(card) -> SingleLabelAnswers | MultiLabelAnswers:
    """The answer shape a checked bundle (handlers.bundle.ModelCard) calls for."""
    if card.problem_type == MULTI:
        return MultiLabelAnswers(card.labels, card.thresholds)
    return SingleLabelAnswers(card.labels, card.temperature)
