"""Out-of-scope detection: the detector's scores (handlers/out_of_scope.py), its fitting and threshold rules
(training/out_of_scope.py), and the handler's answers on tiny bundles that carry one, single- and multi-label, on
TorchScript and ONNX Runtime."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from handlers.bundle import OUT_OF_SCOPE_FILE, BundleError, check
from handlers.out_of_scope import Detector, raw_scores, tail_share
from tests.test_handler import body, make_handler, run
from training import out_of_scope
from training.tiny import CORPUS, make_tiny_bundle

LABELS = ("billing", "card", "refund")
IN_SCOPE = CORPUS[0]  # a text the tiny detectors were fitted on
FAR = "qqq zzz xxxx vvvv 12345 %%%% ####"  # tokens the tiny models never saw together


def clusters(rng, centres, n=50, spread=0.1):
    """Points around each centre, labelled by centre."""
    points = np.concatenate([c + spread * rng.standard_normal((n, len(c))) for c in centres])
    return points, np.repeat(np.arange(len(centres)), n)


def test_mahalanobis_scores_in_distribution_points_high_and_far_points_low():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    features, targets = clusters(rng, centres)
    every = np.ones(len(features), dtype=bool)
    probs = np.eye(3)[targets]
    validation = out_of_scope.Texts(probs, features, every, every, ~every)
    detector, rule = out_of_scope.fit("mahalanobis", features, targets, validation, np.arange(3), None, 0.95)
    assert detector.threshold == 0.05 and "keeps 95%" in rule
    near = centres + 0.05
    far = np.array([[10.0, 10.0, 10.0], [-8.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    scores = detector.in_scope(np.full((6, 3), 1 / 3), np.concatenate([near, far]))
    assert (scores[:3] > 0.5).all() and (scores[3:] == 0).all()
    # The scale is the share of in-scope validation texts that scored no better: about 95% are kept.
    assert 0.93 <= (detector.in_scope(probs, features) >= detector.threshold).mean() <= 0.97


def test_max_prob_scores_confident_answers_high():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    assert raw_scores("max_prob", probs, None, {}, np.arange(3)).tolist() == [0.9, 0.4]
    # The out-of-scope class is not an in-scope label: its probability never counts as confidence.
    assert raw_scores("max_prob", np.array([[0.1, 0.1, 0.8]]), None, {}, np.arange(2)).tolist() == [0.1]
    assert tail_share(np.array([0.0, 0.5, 2.0]), np.array([0.1, 0.5, 0.9, 1.0])).tolist() == [0.0, 0.5, 1.0]


def test_threshold_with_out_of_scope_examples_maximises_accuracy_plus_recall():
    # In-scope texts score 0.3-1.0 and are answered right; out-of-scope ones score 0-0.2.
    in_scope = np.concatenate([np.linspace(0.3, 1.0, 20), np.linspace(0.0, 0.2, 10)])
    known = np.arange(30) < 20
    split = out_of_scope.Texts(None, None, known, known, np.zeros(30, dtype=bool))
    threshold, rule = out_of_scope.choose_threshold(in_scope, split, 0.7)
    assert 0.2 < threshold <= 0.3 and "10 out-of-scope examples" in rule and "it keeps 100.0%" in rule
    # --in-scope-coverage stays the floor: the examples never make the threshold reject more in-scope texts.
    threshold, rule = out_of_scope.choose_threshold(in_scope, split, 0.95)
    assert threshold == 0.05 and "keeping at least 95% of in-scope" in rule
    # A model that knows nothing would score best by rejecting everything; the floor keeps it servable (below 1).
    weak = out_of_scope.Texts(None, None, known, np.zeros(30, dtype=bool), np.zeros(30, dtype=bool))
    assert out_of_scope.choose_threshold(np.linspace(0.0, 1.0, 30), weak, 0.5)[0] <= 0.5
    # Without them, the coverage rule.
    threshold, rule = out_of_scope.choose_threshold(in_scope[:20], out_of_scope.Texts(None, None, known[:20], known[:20],
                                                                                         np.zeros(20, dtype=bool)), 0.9)
    assert threshold == 0.1 and "keeps 90%" in rule


def test_evaluate_reports_the_papers_figures():
    detector = Detector("max_prob", 0.6, np.array([0.2, 0.4, 0.6, 0.8]), {}, np.arange(2), None)
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.5, 0.5], [0.55, 0.45], [0.3, 0.7]])
    in_scope = np.array([True, True, True, True, False, False])
    correct = np.array([True, True, False, True, False, False])
    figures = out_of_scope.evaluate(detector, out_of_scope.Texts(probs, None, in_scope, correct, np.zeros(6, bool)))
    # in_scope: 1.0, 0.75, 0.75, 0.5, 0.5, 0.75 -> flagged: the 4th and 5th text.
    assert figures["in_scope_accuracy"] == 0.5 and figures["in_scope_accuracy_without_detection"] == 0.75
    assert figures["out_of_scope_recall"] == 0.5 and figures["out_of_scope_precision"] == 0.5
    assert 0 <= figures["auroc"] <= 1 and figures["out_of_scope_share"] == 2 / 6


def test_decided_oos_reads_single_and_multi_label_decisions():
    assert out_of_scope.decided_oos(np.array([0, 2, 1]), 2).tolist() == [False, True, False]
    assert out_of_scope.decided_oos(np.array([[1, 0, 0], [0, 0, 1]]), 2).tolist() == [False, True]
    assert out_of_scope.decided_oos(np.array([0, 2]), None).tolist() == [False, False]


@pytest.fixture(scope="module", params=["torchscript", "onnxruntime"])
def runtime(request):
    return request.param


@pytest.fixture(scope="module")
def single(tmp_path_factory, runtime):
    return make_tiny_bundle(tmp_path_factory.mktemp("single") / runtime, labels=LABELS, runtime=runtime,
                            detector="mahalanobis")


@pytest.fixture(scope="module")
def multi(tmp_path_factory, runtime):
    return make_tiny_bundle(tmp_path_factory.mktemp("multi") / runtime, labels=LABELS, runtime=runtime,
                            detector="mahalanobis", thresholds=[0.01, 0.99, 0.01])


def answers(handler, texts):
    [(status, _, answer)] = run(handler, [body({"texts": texts})])
    assert status == 200
    return answer["predictions"] if isinstance(answer, dict) else answer


def test_single_label_answers_far_texts_out_of_scope(single):
    near, far = answers(make_handler(single), [IN_SCOPE, FAR])
    assert near["out_of_scope"] is False and near["label"] in LABELS and near["in_scope"] > 0.05
    assert far == {**far, "label": "out_of_scope", "out_of_scope": True, "in_scope": 0.0, "score": 1.0}
    assert set(far["scores"]) <= set(LABELS)  # the nearest labels stay visible to a client that wants them


def test_multi_label_answers_an_empty_label_set(multi):
    near, far = answers(make_handler(multi), [IN_SCOPE, FAR])
    assert near["out_of_scope"] is False and sorted(near["labels"]) == ["billing", "refund"]
    assert far["out_of_scope"] is True and far["labels"] == [] and far["label"] == "out_of_scope"


def test_archive_options_rename_move_and_turn_off_detection(single):
    near, far = answers(make_handler(single, {"out_of_scope_label": "none_of_these"}), [IN_SCOPE, FAR])
    assert far["label"] == "none_of_these"
    # A threshold above every score answers every text out of scope; 0 none.
    assert all(a["out_of_scope"] for a in answers(make_handler(single, {"out_of_scope_threshold": 0.999}), [IN_SCOPE, FAR]))
    assert not any(a["out_of_scope"] for a in answers(make_handler(single, {"out_of_scope_threshold": 0.0}), [IN_SCOPE, FAR]))
    off = answers(make_handler(single, {"out_of_scope": False}), [IN_SCOPE, FAR])
    assert all("in_scope" not in a and a["label"] in LABELS for a in off)


def test_the_out_of_scope_class_of_a_run_is_never_a_label_in_answers(tmp_path):
    # "refund" plays a trained out-of-scope class (--out-of-scope-label): a text the model gives it is out of scope.
    bundle = make_tiny_bundle(tmp_path / "oos", labels=LABELS, detector="max_prob")
    card = json.loads((bundle / "model_card.json").read_text())
    card["out_of_scope"]["oos_class"] = 2
    (bundle / "model_card.json").write_text(json.dumps(card))
    handler = make_handler(bundle, {"out_of_scope_threshold": 0.0})  # the class alone decides
    for answer in answers(handler, CORPUS[:8]):
        assert "refund" not in answer["scores"]
        assert answer["out_of_scope"] == (answer["label"] == "out_of_scope")


def test_bundles_without_a_detector_answer_as_before(tmp_path):
    [answer] = answers(make_handler(make_tiny_bundle(tmp_path / "plain", labels=LABELS)), [FAR])
    assert answer["label"] in LABELS and "in_scope" not in answer and "out_of_scope" not in answer


def test_a_modified_detector_file_is_refused(single, tmp_path):
    copy = shutil.copytree(single, tmp_path / "copy")
    (copy / OUT_OF_SCOPE_FILE).write_bytes((copy / OUT_OF_SCOPE_FILE).read_bytes() + b"\0")
    with pytest.raises(BundleError, match="SHA-256"):
        check(copy)
    (copy / OUT_OF_SCOPE_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        check(copy)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_trained_run_exports_its_detector_and_the_features_it_reads(roberta_run, tmp_path, fmt):
    from training.export import ExportConfig, main

    run = json.loads((roberta_run / "run.json").read_text())
    assert run["out_of_scope"]["kind"] == "mahalanobis" and (roberta_run / OUT_OF_SCOPE_FILE).is_file()
    # A tiny random model does not beat the majority class: --allow-weak.
    results = main(ExportConfig(run_dir=str(roberta_run), output_dir=str(tmp_path / fmt), format=fmt, allow_weak=True))
    assert results["fp32"]["parity"]["features_max_abs_diff"] <= 1e-4  # checked like the logits
    card = json.loads((tmp_path / fmt / "model_card.json").read_text())
    assert card["outputs"] == ["logits", "features"]
    assert card["out_of_scope"]["kind"] == "mahalanobis" and card["out_of_scope"]["threshold"] == run["out_of_scope"]["threshold"]
    assert (tmp_path / fmt / OUT_OF_SCOPE_FILE).read_bytes() == (roberta_run / OUT_OF_SCOPE_FILE).read_bytes()
    profile = json.loads((tmp_path / fmt / "reference_profile.json").read_text())
    assert profile["out_of_scope"] == round(card["out_of_scope"]["test_share"] * profile["texts"])
    for answer in answers(make_handler(tmp_path / fmt), [IN_SCOPE, FAR]):
        assert 0 <= answer["in_scope"] <= 1 and isinstance(answer["out_of_scope"], bool)
