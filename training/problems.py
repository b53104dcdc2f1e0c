"""Problem types: what a label is and how logits become decisions, metrics and a loss.

    single_label_classification   one label per text: softmax (calibrated by a temperature fitted on
                                  validation), cross-entropy, argmax
    multi_label_classification    any number of labels per text (none included): a sigmoid per label,
                                  binary cross-entropy, decision thresholds tuned on validation (per label,
                                  or one shared where per-label ones do not hold up out of fold)

Training, the report and export ask `problem_for(...)` once and call the same methods whatever the type;
the serving side has its twin in handlers/answers.py (the bundle records the type and the thresholds).
Targets are label ids (single) or a 0/1 matrix [texts, labels] (multi); probabilities are [texts, labels].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handlers.bundle import MULTI, SINGLE
from training.data import label_ids, label_matrix
from training.report import calibration, headline, write_multilabel_report, write_report
from training.scores import f1_scores, label_f1, macro_f1

# Threshold grid for multi-label decisions, and the validation positives a label needs before its threshold
# is tuned rather than shared: a threshold fitted to one or two examples is noise.
# Low thresholds are in the grid because rare labels' probabilities stay far below 0.5 for a long time.
THRESHOLD_GRID = np.round(np.concatenate([[0.01, 0.02, 0.03], np.arange(0.05, 0.96, 0.05)]), 2)
MIN_POSITIVES_TO_TUNE = 5
# Per-label thresholds are kept only if they beat one shared threshold out of fold on validation. With a
# few dozen validation positives a label, a threshold per label fits that split's noise: on banking77-multi
# (77 labels, 1,000 validation rows, ~24 positives a label) per-label thresholds scored 90.4 macro-F1 out of
# fold against 90.8 for one shared threshold, and 85.0 against 86.1 on the test split (bench/JOURNAL.md).
THRESHOLD_FOLDS = 5
# A decision threshold under this says a label is chosen when the model itself gives it less than a 10% chance:
# its probabilities have not separated the label from the rest, and the low threshold only trades precision
# for recall on a model that has not learnt the label yet (the grid reaches 0.01 for rare labels early in
# training). The trained banking77-multi model kept a shared 0.35 (bench/results/multilabel.md).
THRESHOLD_FLOOR = 0.1
# Temperature scaling is checked out of fold like the thresholds: fitted on all validation folds but one and
# applied to the one left out. Below TEMPERATURE_MIN_ROWS validation rows the 15-bin ECE compares noise
# (a few texts a bin), so no temperature is applied.
TEMPERATURE_FOLDS = 5
TEMPERATURE_MIN_ROWS = 50
# A temperature is applied only if its out-of-fold gain exceeds this many bootstrap standard deviations of
# the gain (about a one-sided 98% level): a gain within validation's noise is as likely to be a loss on test.
TEMPERATURE_MARGIN = 2.0
TEMPERATURE_BOOTSTRAP = 200


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray, grid=THRESHOLD_GRID,
                    min_positives: int = MIN_POSITIVES_TO_TUNE, fallback: float = 0.5) -> tuple[list[float], int]:
    """Per label, the grid threshold with the best F1 on (probs, y_true); `fallback` for labels with fewer
    than `min_positives` positives. Returns (thresholds, how many fell back). Ties go to the threshold
    nearest 0.5, so an uninformative label keeps the neutral choice."""
    probs, y_true = np.asarray(probs), np.asarray(y_true, dtype=bool)
    best, best_f1 = np.full(probs.shape[1], 0.5), np.full(probs.shape[1], -1.0)
    for t in sorted(grid, key=lambda t: abs(t - 0.5)):
        f1 = label_f1(y_true, probs >= t)
        better = f1 > best_f1 + 1e-12
        best[better], best_f1[better] = t, f1[better]
    few = y_true.sum(axis=0) < min_positives
    return [float(t) for t in np.where(few, fallback, best)], int(few.sum())


def shared_threshold(probs: np.ndarray, y_true: np.ndarray, grid=THRESHOLD_GRID) -> float:
    """The one grid threshold for every label with the best macro-F1 on (probs, y_true); ties nearest 0.5."""
    probs = np.asarray(probs)
    return float(max(sorted(grid, key=lambda t: abs(t - 0.5)), key=lambda t: macro_f1(y_true, probs >= t)))


def choose_thresholds(probs: np.ndarray, y_true: np.ndarray, folds: int = THRESHOLD_FOLDS,
                      seed: int = 13) -> tuple[list[float], str]:
    """Decision thresholds from validation (probs, y_true), and one line saying which kind and why.

    Per-label thresholds (a label with too few positives takes the shared one) if, fitted on all but one
    of `folds` folds and scored on the one left out, they reach a higher macro-F1 than one shared
    threshold fitted the same way; otherwise the shared threshold for every label (ties go to the simpler
    rule). Both are then refitted on all of validation."""
    probs, y_true = np.asarray(probs), np.asarray(y_true, dtype=bool)
    n = probs.shape[1]
    shared = shared_threshold(probs, y_true)
    per_label, fell_back = tune_thresholds(probs, y_true, fallback=shared)
    tuned = (f"decision thresholds tuned on validation for {n - fell_back} of {n} labels; {fell_back} with fewer "
             f"than {MIN_POSITIVES_TO_TUNE} validation positives take the shared {shared:.2f}")
    k = min(folds, len(probs) // 2)
    if k < 2:
        return per_label, tuned + " (too few validation rows to check them out of fold)"
    fold = np.random.default_rng(seed).permutation(len(probs)) % k
    out_per, out_shared = np.zeros_like(y_true), np.zeros_like(y_true)
    for i in range(k):
        fit, held = fold != i, fold == i
        s = shared_threshold(probs[fit], y_true[fit])
        out_shared[held] = probs[held] >= s
        out_per[held] = probs[held] >= np.asarray(tune_thresholds(probs[fit], y_true[fit], fallback=s)[0])
    score_per, score_shared = 100 * macro_f1(y_true, out_per), 100 * macro_f1(y_true, out_shared)
    if score_shared >= score_per:
        return [shared] * n, (f"one shared decision threshold {shared:.2f} for all {n} labels: per-label thresholds "
                              f"scored {score_per:.1f} macro-F1 out of {k} validation folds, the shared one {score_shared:.1f}"
                              + below_floor([shared] * n))
    return per_label, (tuned + f" (out of {k} validation folds: per-label {score_per:.1f} macro-F1, shared {score_shared:.1f})"
                       + below_floor(per_label))


def below_floor(thresholds: list[float]) -> str:
    """The clause a threshold line ends with when thresholds kept are below THRESHOLD_FLOOR; '' otherwise."""
    low = [t for t in thresholds if t < THRESHOLD_FLOOR]
    if not low:
        return ""
    advice = "the model's probabilities are too low to decide; train longer or with more rows per label"
    if len(set(thresholds)) == 1:
        return f"; shared threshold {low[0]:.2f} is below {THRESHOLD_FLOOR:.2f}: {advice}"
    return (f"; {len(low)} of {len(thresholds)} labels' thresholds are below {THRESHOLD_FLOOR:.2f} "
            f"(lowest {min(low):.2f}): {advice}")


def fit_temperature(probs: np.ndarray, targets) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log(probs) / T) on (probs, targets):
    log-probabilities are the logits up to a per-row constant, which the softmax ignores. Dividing every
    logit by one positive T never changes the argmax, so decisions and accuracy stay as they were."""
    import torch  # imported here: training.summary reads metrics without torch

    logp = torch.log(torch.as_tensor(np.asarray(probs), dtype=torch.float64).clamp_min(1e-12))
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def rescale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): the same texts' probabilities at another temperature, without a forward pass."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def choose_temperature(probs: np.ndarray, targets, folds: int = TEMPERATURE_FOLDS, seed: int = 13) -> tuple[float | None, dict]:
    """The temperature to apply to validation `probs` (computed at T=1) and the decision, or None.

    A temperature fitted on validation lowers validation's NLL by construction, yet out of sample it can raise
    the calibration error. So, as `choose_thresholds` checks per-label thresholds: T is fitted on all but one
    of `folds` folds and applied to the fold left out; the pooled out-of-fold probabilities' ECE is compared
    with the same texts' ECE at T=1, and the temperature (refitted on all of validation) is applied only if it
    is lower. Ties, and fewer than TEMPERATURE_MIN_ROWS rows, keep T=1 (None).
    The decision: temperature (fitted on all of validation), applied, folds, rows, the out-of-fold ECE with
    and without it, and a one-line `rule`."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    fitted = fit_temperature(probs, targets)
    decision = {"temperature": fitted, "applied": False, "folds": 0, "rows": len(probs),
                "ece_out_of_fold_without": None, "ece_out_of_fold_with": None}
    if len(probs) < TEMPERATURE_MIN_ROWS:
        decision["rule"] = (f"no temperature: {len(probs)} validation rows are too few (under {TEMPERATURE_MIN_ROWS}) "
                            f"to check the fitted {fitted:.2f} out of fold")
        return None, decision
    k = min(folds, len(probs) // 2)
    fold = np.random.default_rng(seed).permutation(len(probs)) % k
    scaled = np.zeros(probs.shape, dtype=np.float32)
    for i in range(k):
        fit, held = fold != i, fold == i
        scaled[held] = rescale(probs[held], fit_temperature(probs[fit], targets[fit]))
    without, with_t = calibration(targets, probs)["ece"], calibration(targets, scaled)["ece"]
    # The gain must stand out of its own noise: on the demo's 333 validation tweets a temperature lowered
    # out-of-fold ECE by 0.011 and raised test ECE from 0.028 to 0.038. The noise is the standard deviation of
    # the gain over bootstrap resamples of validation (paired: both sides scored on the same resample).
    rng, gains = np.random.default_rng(seed), []
    for _ in range(TEMPERATURE_BOOTSTRAP):
        i = rng.integers(0, len(probs), len(probs))
        gains.append(calibration(targets[i], probs[i])["ece"] - calibration(targets[i], scaled[i])["ece"])
    noise = float(np.std(gains))
    applied = without - with_t > TEMPERATURE_MARGIN * noise + 1e-12  # a tie keeps the simpler rule: no temperature
    decision.update(applied=applied, folds=k, ece_out_of_fold_without=without, ece_out_of_fold_with=with_t,
                    gain_noise=noise)
    figures = (f"out of {k} validation folds ECE {with_t:.4f} with it, {without:.4f} without; the gain's bootstrap "
               f"standard deviation {noise:.4f}")
    decision["rule"] = (f"temperature {fitted:.2f} applied: {figures}" if applied else
                        f"no temperature: the fitted {fitted:.2f} does not lower calibration error by more than "
                        f"{TEMPERATURE_MARGIN:g} standard deviations ({figures})")
    return (fitted if applied else None), decision


class Objective:
    """What the trainer minimises on a batch: one forward of the model and the loss of its logits against the
    batch's targets. The problem types inherit it; training.distill's objective also runs its teacher."""

    def forward_loss(self, model, inputs: dict, targets, weight=None):
        """(loss, outputs) of one batch; `inputs`: the tokenized batch without its targets."""
        outputs = model(**inputs)
        return self.loss(outputs.logits, targets, weight), outputs


@dataclass
class SingleLabel(Objective):
    """One label per text; probabilities are calibrated by a temperature fitted on validation."""

    name: str = SINGLE
    thresholds: None = None  # decisions are an argmax
    gate_metric: str = "accuracy"  # what export's --max-accuracy-drop compares between variants
    temperature: float = 1.0
    learning_rate_scale: float = 1.0  # the default learning rate's factor (training.train.learning_rate_for)

    def targets(self, frame, labels: list[str]) -> np.ndarray:

        return np.asarray(label_ids(frame, labels))

    def probabilities(self, logits):
        from handlers.answers import softmax  # imports torch: not at start-up (training.summary needs none)

        return softmax(logits, self.temperature)

    def loss(self, logits, targets, weight=None):
        """Cross-entropy on float32 logits; `weight`: one per class (--class-weights balanced)."""
        import torch  # imported here: training.summary reads metrics without torch

        return torch.nn.functional.cross_entropy(logits.float(), targets, weight=weight)

    def balanced_weights(self, targets: np.ndarray, n_labels: int) -> list[float]:
        """scikit-learn's 'balanced': n_samples / (n_classes * count); every class occurs in train."""
        counts = np.bincount(np.asarray(targets), minlength=n_labels)
        return (len(targets) / (n_labels * counts)).tolist()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).argmax(axis=1)

    def headline(self, targets, probs: np.ndarray) -> dict:
        return headline(targets, self.decide(probs))

    def fit(self, probs: np.ndarray, targets) -> str | None:
        """Fit decision parameters on validation; nothing to fit for an argmax."""
        return None

    def init_head(self, model, targets: np.ndarray) -> None:
        """A fresh softmax head starts fine at zero bias."""

    def calibrate(self, probs: np.ndarray, targets) -> tuple[float | None, dict]:
        """(the temperature to apply or None, the decision): `choose_temperature` on validation probabilities
        computed at temperature 1. It is returned, not kept: training.train goes on computing probabilities at
        temperature 1 (the test split's included, after --refit) and rescales them itself, so no probability
        is scaled twice."""
        return choose_temperature(probs, targets)

    def describe(self, m: dict) -> str:
        return f"accuracy {100 * m['accuracy']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f} on {m['samples']} texts"

    def write_report(self, out_dir, labels: list[str], texts: list[str], targets, probs: np.ndarray) -> dict:
        return write_report(out_dir, labels, texts, targets, probs)


@dataclass
class MultiLabel(Objective):
    """Any number of labels per text, each decided by its own threshold on its own sigmoid."""

    n_labels: int
    name: str = MULTI
    thresholds: list = field(default_factory=list)
    gate_metric: str = "micro_f1"
    # Twice the single-label default: each sigmoid learns from its own few positives (about 3% of texts per
    # label on banking77-multi), and at MiniLM's 1e-4 validation macro-F1 was still rising at the 10-epoch
    # cap (90.4), where 2e-4 reached 94.3 and test macro-F1 88.0 against 85.7 (bench/results/train.md).
    learning_rate_scale: float = 2.0

    def targets(self, frame, labels: list[str]) -> np.ndarray:

        return label_matrix(frame, labels)

    def __post_init__(self):
        if not self.thresholds:
            self.thresholds = [0.5] * self.n_labels

    def probabilities(self, logits):
        from handlers.answers import sigmoid  # imported here: it imports torch, which training.summary does without

        return sigmoid(logits)

    def loss(self, logits, targets, weight=None):
        """Binary cross-entropy per label; `weight`: a pos_weight per label (--class-weights balanced)."""
        import torch  # imported here: training.summary reads metrics without torch

        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                                    pos_weight=weight)

    def balanced_weights(self, targets: np.ndarray, n_labels: int) -> list[float]:
        """pos_weight per label: negatives / positives, so each label's positives weigh as much as its
        negatives in the loss (every label occurs positive in train: the data checks it)."""
        positives = np.asarray(targets).sum(axis=0)
        return ((len(targets) - positives) / np.maximum(positives, 1)).tolist()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return (np.asarray(probs) >= np.asarray(self.thresholds)[None, :]).astype(int)

    def headline(self, targets, probs: np.ndarray) -> dict:
        return f1_scores(targets, self.decide(probs))

    def calibrate(self, probs: np.ndarray, targets) -> tuple[None, dict]:
        """Multi-label decisions rest on per-label thresholds tuned on validation; no temperature."""
        return None, {}

    def init_head(self, model, targets: np.ndarray) -> None:
        """Start each label's output bias at the logit of its training prevalence. A fresh head says 0.5 for
        every label; with 77 labels of about 3% prevalence each, plain BCE then spends its first epochs
        learning "mostly no" (on 2,000 banking77-multi rows, 3 epochs predicted no label at all) before it
        learns which. Starting from the prior skips that phase (Lin et al., 2017, focal loss, section 3.3)."""
        import torch  # imported here: training.summary reads metrics without torch

        head = last_linear(model, self.n_labels)
        prevalence = np.clip(np.asarray(targets).mean(axis=0), 1e-4, 1 - 1e-4)
        with torch.no_grad():
            head.bias.copy_(torch.as_tensor(np.log(prevalence / (1 - prevalence)), dtype=head.bias.dtype))

    def fit(self, probs: np.ndarray, targets) -> str:
        """Fit the decision thresholds on validation; returns one line saying which kind and why."""
        self.thresholds, said = choose_thresholds(probs, targets)
        return said

    def describe(self, m: dict) -> str:
        return (f"micro-F1 {100 * m['micro_f1']:.1f}, macro-F1 {100 * m['macro_f1']:.1f}, subset accuracy "
                f"{100 * m['subset_accuracy']:.1f}% on {m['samples']} texts")

    def write_report(self, out_dir, labels: list[str], texts: list[str], targets, probs: np.ndarray) -> dict:
        return write_multilabel_report(out_dir, labels, texts, targets, probs, self.decide(probs))


def last_linear(model, out_features: int):
    """The classifier's output layer (training.features.head_name finds it), which must have a bias."""
    from training.features import head_name  # imported here: it imports torch, which training.summary does without

    layer = dict(model.named_modules())[head_name(model, out_features)]
    if layer.bias is None:
        raise ValueError(f"the output layer of {type(model).__name__} has no bias")
    return layer


def problem_for(multi_label: bool, n_labels: int, thresholds: list | None = None, temperature: float | None = None):
    """The problem type of a run, with what was fitted on its validation split (runs before calibration: T=1)."""
    if multi_label:
        return MultiLabel(n_labels, thresholds=list(thresholds or []))
    return SingleLabel(temperature=temperature or 1.0)
