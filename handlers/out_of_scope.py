"""Out-of-scope detection: whether a text belongs to none of the model's labels.

A classifier routes every text to one of its labels, with confidence, even a text it was never trained for.
The detector fitted at the end of training (training/out_of_scope.py) gives every text an `in_scope` score and
answers texts below its threshold as out of scope. Two detectors, the same contract:

    mahalanobis  the distance of the text's features (the input of the classifier's last layer, exported beside
                 the logits) to the nearest class mean, with one covariance shared by all classes
                 (Lee et al., 2018; Podolskiy et al., 2021); the default: on clinc150 it separated out-of-scope
                 queries far better than the probability did (bench/results/out_of_scope.md)
    max_prob     the highest probability of an in-scope label, as served (calibrated): the classic baseline
                 (Hendrycks & Gimpel, 2017)

Raw scores differ in scale (a squared distance, a probability), so each is mapped to one meaning: `in_scope` is
the share of the in-scope validation texts that scored no better than this text (their raw scores are stored in
the bundle, sorted). A typical in-scope text scores about 0.5, one stranger than every validation text 0. The
threshold is on that scale: 0.05 keeps 95% of in-scope validation texts.

Runs trained with out-of-scope examples (`--out-of-scope-label oos`) learn them as one more class; a text whose
answer is that class is out of scope too, and the class never appears among an answer's `scores`.

Bundle layout: the card's `out_of_scope` section (kind, threshold, the out-of-scope class, the file's SHA-256)
and `out_of_scope.npz` (the sorted reference scores; for mahalanobis the whitening matrix and whitened class
means). Bundles exported before detection have neither and are served as before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handlers.bundle import OUT_OF_SCOPE_FILE, BundleError

if TYPE_CHECKING:  # torch is not imported at run time: run directories and `textclf summary` read this module
    import torch

KINDS = ("mahalanobis", "max_prob")
NEEDS_FEATURES = {"mahalanobis": True, "max_prob": False}
CARD_KEY = "out_of_scope"
logger = logging.getLogger(__name__)


def raw_scores(kind: str, probs, features, arrays: dict, in_scope_ids) -> np.ndarray:
    """Higher is more in scope. `probs` [texts, labels] as served; `features` [texts, width] (mahalanobis);
    `arrays`: `whiten` [width, width] and `centres` [classes, width] (the class means, whitened). Numpy arrays or
    torch tensors.

    Computed with torch, never numpy's matrix product: in a worker, numpy's BLAS starts a thread pool of its
    own, whose threads go on spinning beside torch's: on 2 cores the forward pass ran 70% slower next to it
    (4.8 against 2.8 ms a text, bench/JOURNAL.md), the detector itself 0.02 ms a text with torch."""
    import torch  # imported here: run directories and `textclf summary` read this module without loading torch

    if kind == "max_prob":
        probs = torch.as_tensor(probs, dtype=torch.float64)
        return probs[:, torch.as_tensor(in_scope_ids, dtype=torch.long)].max(dim=1).values.numpy()
    # ||(x - mu) W||^2 = ||xW||^2 - 2 xW.muW + ||muW||^2, for every class at once: [texts, classes].
    whiten, centres = (torch.as_tensor(arrays[name], dtype=torch.float64) for name in ("whiten", "centres"))
    z = torch.as_tensor(features).to(torch.float64) @ whiten
    distances = (z * z).sum(dim=1, keepdim=True) - 2 * z @ centres.T + (centres * centres).sum(dim=1)[None, :]
    return (-distances.min(dim=1).values).numpy()


def tail_share(raw: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The share of `reference` (sorted raw scores of in-scope validation texts) at or below each raw score."""
    return np.searchsorted(reference, raw, side="right") / max(1, len(reference))


@dataclass(frozen=True)
class Detector:
    """A fitted detector as the bundle stores it."""

    kind: str
    threshold: float  # on the in_scope scale: below it, out of scope
    reference: np.ndarray  # sorted raw scores of in-scope validation texts
    arrays: dict  # mahalanobis: whiten, centres
    in_scope_ids: np.ndarray  # the label ids that are in scope (all but the out-of-scope class)
    oos_class: int | None  # the label id of the out-of-scope class, when the run trained one

    @property
    def needs_features(self) -> bool:
        return NEEDS_FEATURES[self.kind]

    def in_scope(self, probs: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        return tail_share(raw_scores(self.kind, probs, features, self.arrays, self.in_scope_ids), self.reference)

    def section(self) -> dict:
        """What run.json and the card record (the card adds the file's SHA-256)."""
        return {"kind": self.kind, "threshold": self.threshold, "oos_class": self.oos_class}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / OUT_OF_SCOPE_FILE
        with open(path, "wb") as f:  # np.savez on a name would append .npz to a name without it
            np.savez(f, reference=self.reference, in_scope_ids=self.in_scope_ids, **self.arrays)
        return path


def read(folder: Path, section: dict | None, where) -> Detector | None:
    """The detector a bundle's card describes (None: the bundle has none). Raises BundleError."""
    if not section:
        return None
    kind, threshold, oos_class = section.get("kind"), section.get("threshold"), section.get("oos_class")
    if kind not in KINDS:
        raise BundleError(f"{where}: out_of_scope kind {kind!r} is not served (use one of {', '.join(KINDS)})")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise BundleError(f"{where}: out_of_scope threshold must be a number in [0, 1), got {threshold!r}")
    path = Path(folder) / OUT_OF_SCOPE_FILE  # in a bundle, bundle.check has verified it against the card's SHA-256
    if not path.is_file():
        raise BundleError(f"{path}: missing (the out_of_scope section of {where} names it)")
    with np.load(path, allow_pickle=False) as data:  # no pickles: a bundle is data, never code
        arrays = {name: data[name].astype(np.float64) for name in data.files}
    reference, in_scope_ids = arrays.pop("reference"), arrays.pop("in_scope_ids").astype(int)
    return Detector(kind, float(threshold), reference, arrays, in_scope_ids,
                    None if oos_class is None else int(oos_class))


class NoDetection:
    """A bundle without a detector, or one the archive turned off: answers go out as they are."""

    needs_features = False

    def scores(self, probs: torch.Tensor, features) -> list:
        return [None] * len(probs)

    def mark(self, answer: dict, in_scope) -> dict:
        return answer

    def is_out(self, answer: dict) -> bool:
        return False


class Detection:
    """Adds `in_scope` and `out_of_scope` to every answer, and answers out-of-scope texts with `label`: single-label
    `label`/`score` become the out-of-scope label and 1 - in_scope; multi-label `labels` becomes empty. `scores`
    keeps the model's own ranking (without the out-of-scope class), for a client that wants the nearest label."""

    def __init__(self, detector: Detector, labels: list[str], label: str, threshold: float | None):
        self.detector, self.label = detector, label
        self.threshold = detector.threshold if threshold is None else threshold
        self.oos_name = None if detector.oos_class is None else labels[detector.oos_class]
        self.needs_features = detector.needs_features

    def scores(self, probs: torch.Tensor, features: torch.Tensor | None) -> list[float]:
        return self.detector.in_scope(probs.cpu(), None if features is None else features.float().cpu()).tolist()

    def mark(self, answer: dict, in_scope: float) -> dict:
        scores = {k: v for k, v in answer["scores"].items() if k != self.oos_name}
        # The model's own decision gives the out-of-scope class: single-label its label, multi-label its label set.
        decided = self.oos_name in answer["labels"] if "labels" in answer else answer["label"] == self.oos_name
        out = in_scope < self.threshold or (self.oos_name is not None and decided)
        answer = {**answer, "scores": scores, "in_scope": round(in_scope, 4), "out_of_scope": out}
        if out:
            # The out-of-scope class's own probability where it decided; else how far below in scope the text is.
            score = answer["score"] if answer["label"] == self.oos_name else round(1 - in_scope, 4)
            answer.update(label=self.label, score=score)
            if "labels" in answer:
                answer["labels"] = []
        return answer

    def is_out(self, answer: dict) -> bool:
        return answer.get("out_of_scope", False)


def detection_for(folder: Path, card, enabled: bool, label: str, threshold: float | None):
    """What the handler runs: the bundle's detector with the archive's options, or NoDetection."""
    detector = read(folder, card.raw.get(CARD_KEY), Path(folder) / "model_card.json")
    if detector is None and threshold is not None:
        logger.warning("out_of_scope_threshold is set but this bundle has no out-of-scope detector (exported before "
                       "detection, or trained with --out-of-scope-detector none): every text gets one of its labels")
    if detector is None or not enabled:
        return NoDetection()
    return Detection(detector, card.labels, label, threshold)
