"""The out-of-scope benchmark's own logic on a tiny run: scoring a run as served, every detector and rule on one
test split, and the report."""
from __future__ import annotations

import numpy as np

from bench import out_of_scope_bench as ob
from training import out_of_scope
from training.rundir import RunDir


def test_rows_for_a_run_cover_every_detector_and_rule(roberta_run):
    scored = ob.Scored(RunDir(roberta_run))
    test = scored.texts(scored.splits.test, ["zzz qqq vvv", "12345 67890"])
    assert test.in_scope.tolist() == [True] * len(scored.splits.test) + [False, False]
    rows = ob.rows_for(scored, test, "tiny")
    # No out-of-scope class and no out-of-scope validation examples: the coverage rules only, per detector.
    assert set(rows) == {f"tiny: {kind}, coverage {c:g}" for kind in ("mahalanobis", "max_prob") for c in ob.COVERAGES}
    for name, row in rows.items():
        assert row["threshold"] == round(1 - float(name.rsplit(" ", 1)[1]), 4)
        assert row["out_of_scope_texts"] == 2 and 0 <= row["auroc"] <= 1


def test_in_scope_only_drops_the_out_of_scope_rows():
    split = out_of_scope.Texts(np.eye(3), None, np.array([True, False, True]), np.ones(3, bool), np.zeros(3, bool))
    kept = ob.in_scope_only(split)
    assert kept.probs.tolist() == [[1, 0, 0], [0, 0, 1]] and kept.features is None and kept.in_scope.all()


def test_the_report_states_the_target_and_every_table():
    row = {"in_scope_accuracy": 0.96, "out_of_scope_recall": 0.7, "out_of_scope_precision": 0.8, "auroc": 0.95,
           "fpr_at_95_in_scope": 0.2, "threshold": 0.05}
    scope = {"in_scope_accuracy": 0.9, "in_scope_accuracy_without_detection": 0.92}
    results = {
        "date": "2026-12-04", "machine": {"cpu_class": "amx", "cpus": 2},
        "clinc150": {"good": row, "poor": {**row, "out_of_scope_recall": 0.3}},
        "banking77": {"mahalanobis": {"banking77_test": scope, "clinc150_oos_test": {"answered_out_of_scope": 0.8},
                                      "rt_polarity_test": {"answered_out_of_scope": 0.9}}},
        "cost": {"banking77": {"labels": 77, "forward_ms_per_text": 2.0, "detector_ms_per_text": 0.02,
                               "detector_share_of_forward": 0.01, "detector_file_bytes": 700_000}},
        "baselines": {"rt-polarity": {"majority": {"accuracy": 0.5, "macro_f1": 0.33},
                                      "tfidf_logreg": {"accuracy": 0.77, "macro_f1": 0.77}, "seconds": 1.0},
                      "runs": {}},
        "calibration": {"rt-polarity": {"temperature": 1.3, "applied": True, "test_ece_without": 0.05,
                                        "test_ece_with": 0.02, "served_minus_without": -0.03, "served_minus_best": 0.0,
                                        "noise_sd": 0.005}},
    }
    text = ob.markdown(results)
    assert "met by good." in text and "| good | 96.0% | 70.0% |" in text
    assert "| mahalanobis | 90.0% (92.0%) | 80.0% | 90.0% |" in text
    assert "| rt-polarity | accuracy 50.0%, macro-F1 33.0 | accuracy 77.0%, macro-F1 77.0 | 1.0 |" in text
    assert "| rt-polarity | 1.30 | yes | 0.0500 | 0.0200 | -0.0300 | +0.0000 | 0.0050 |" in text
    results["clinc150"] = {"poor": results["clinc150"]["poor"]}
    assert "not met by any row" in ob.markdown(results)
