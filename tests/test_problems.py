"""training.problems: the multi-label loss, threshold tuning and metrics, and the single-label twin."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.problems import MultiLabel, SingleLabel, choose_thresholds, problem_for, shared_threshold, tune_thresholds
from training.scores import f1_scores, macro_f1


def test_bce_with_pos_weight_is_the_weighted_formula_and_changes_the_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    weight = torch.tensor([3.0, 1.0, 0.5])
    problem = MultiLabel(3)
    plain, weighted = problem.loss(logits, targets).item(), problem.loss(logits, targets, weight).item()
    p = torch.sigmoid(logits.double())
    by_hand = -(weight * targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean().item()
    assert weighted == pytest.approx(by_hand, rel=1e-6) and abs(weighted - plain) > 0.1


def test_pos_weight_is_negatives_over_positives():
    targets = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    assert MultiLabel(2).balanced_weights(targets, 2) == pytest.approx([1 / 3, 3.0])


def test_threshold_tuning_picks_the_f1_optimal_threshold():
    # Label 0: positives score 0.35 and 0.4, negatives 0.1-0.3: any threshold in (0.3, 0.35] is perfect.
    # Label 1: too few positives to tune: keeps 0.5.
    probs = np.array([[0.35, 0.9], [0.4, 0.2], [0.3, 0.2], [0.2, 0.1], [0.1, 0.3], [0.38, 0.2], [0.36, 0.2],
                      [0.37, 0.1]])
    truth = np.array([[1, 1], [1, 0], [0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0]])
    thresholds, fell_back = tune_thresholds(probs, truth)
    assert thresholds == [pytest.approx(0.35), 0.5] and fell_back == 1
    assert tune_thresholds(probs, truth, fallback=0.3)[0][1] == 0.3


def test_per_label_thresholds_are_kept_where_labels_need_different_ones():
    # Label 0's positives score about 0.2 (negatives 0.05), label 1's about 0.9 (negatives 0.6): no one
    # threshold separates both, per-label ones separate each perfectly, in every fold.
    rng = np.random.default_rng(0)
    truth = rng.random((200, 2)) < 0.3
    probs = np.where(truth, [0.2, 0.9], [0.05, 0.6]) + rng.uniform(-0.02, 0.02, truth.shape)
    thresholds, said = choose_thresholds(probs, truth)
    assert f1_scores(truth, probs >= np.asarray(thresholds))["macro_f1"] == 1.0
    assert thresholds[0] < 0.2 < 0.6 < thresholds[1] and "tuned on validation for 2 of 2 labels" in said


def test_a_shared_threshold_replaces_per_label_ones_that_fit_noise():
    # 40 labels drawn alike, a dozen positives each: every per-label optimum is the noise of its few
    # examples, so out of fold one shared threshold scores higher and is kept for all labels.
    rng = np.random.default_rng(1)
    truth = rng.random((150, 40)) < 0.08
    probs = np.clip(np.where(truth, rng.normal(0.45, 0.2, truth.shape), rng.normal(0.2, 0.15, truth.shape)), 0, 1)
    thresholds, said = choose_thresholds(probs, truth)
    assert thresholds == [shared_threshold(probs, truth)] * 40
    assert said.startswith("one shared decision threshold") and "out of 5 validation folds" in said
    problem = MultiLabel(40)
    assert problem.fit(probs, truth) == said and problem.thresholds == thresholds


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    truth, pred = rng.random((50, 6)) < 0.2, rng.random((50, 6)) < 0.2
    truth[:, 5] = pred[:, 5] = False  # a label never true nor predicted scores 0 in both
    assert macro_f1(truth, pred) == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))


def test_f1_scores_on_a_hand_made_example():
    truth = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 1]])
    m = f1_scores(truth, pred)
    assert m["subset_accuracy"] == 0.5  # rows 0 and 2 exact; the empty row predicted empty counts
    assert m["hamming_loss"] == pytest.approx(3 / 12)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (5 + 4))  # tp 3, 5 true, 4 predicted
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # per label: tp 1 of 2 true, 1 pred; 2/2/2; 0/1/1
    assert m["samples_f1"] == pytest.approx((1 + 2 / 3 + 1 + 0.5) / 4)
    assert m["samples"] == 4


def test_problem_for_and_single_label_decisions():
    assert isinstance(problem_for(False, 3), SingleLabel)
    multi = problem_for(True, 2, [0.3, 0.6])
    assert multi.thresholds == [0.3, 0.6] and multi.decide(np.array([[0.4, 0.5]])).tolist() == [[1, 0]]
    assert problem_for(True, 2).thresholds == [0.5, 0.5]
    single = SingleLabel()
    assert single.headline([0, 1], np.array([[0.9, 0.1], [0.6, 0.4]]))["accuracy"] == 0.5
    assert torch.allclose(single.probabilities(torch.zeros(1, 4)), torch.full((1, 4), 0.25))


def test_temperature_fitted_on_overconfident_probabilities_recovers_the_scale_and_keeps_decisions():
    from training.problems import fit_temperature, rescale
    from training.report import calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 2.0
    truth = np.array([rng.choice(3, p=row) for row in rescale(np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                                                               1.0)])
    overconfident = rescale(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1 / 3)  # logits x 3
    temperature = fit_temperature(overconfident, truth)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = rescale(overconfident, temperature)
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()
    assert calibration(truth, calibrated)["ece"] < calibration(truth, overconfident)["ece"] / 2
    single = SingleLabel()
    chosen, decision = single.calibrate(overconfident, truth)
    assert chosen == pytest.approx(temperature) and decision["applied"]
    assert MultiLabel(3).calibrate(overconfident, truth) == (None, {})


def test_calibration_metrics_on_a_hand_made_example():
    from training.report import calibration

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    truth = np.array([0, 1, 0, 1])
    m = calibration(truth, probs, bins=10)
    # bin 0.9: 2 texts, accuracy 0.5 (|0.5 - 0.9| = 0.4); bin 0.6: 2 texts, accuracy 1.0 (0.4).
    assert m["ece"] == pytest.approx(0.4)
    assert m["brier"] == pytest.approx((0.02 + 1.62 + 0.32 + 0.32) / 4)


def test_multi_label_head_starts_at_the_label_prior(tiny_distilbert_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_distilbert_dir, num_labels=3,
                                                               problem_type="multi_label_classification")
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    MultiLabel(3).init_head(model, targets)
    bias = torch.sigmoid(model.classifier.bias.detach()).numpy()
    assert bias == pytest.approx([0.75, 0.25, 1e-4], rel=1e-3)  # never-positive clipped, not -inf
