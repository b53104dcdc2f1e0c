"""bench.feedback_bench's pieces that need no training: the halving, the scripted reviewer, the targets."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from bench.feedback_bench import FeedbackBenchConfig, halves, markdown, scripted_answers, targets
from textclf.pipelines.review import review


@pytest.fixture
def data_root(tmp_path):
    folder = tmp_path / "rt-polarity"
    folder.mkdir()
    pd.DataFrame({"text": [f"text {i}" for i in range(10)], "label": ["positive", "negative"] * 5}).to_csv(
        folder / "train.csv", index=False)
    pd.DataFrame({"text": ["t1", "t2"], "label": ["positive", "negative"]}).to_csv(folder / "test.csv", index=False)
    return tmp_path


def test_halves_split_train_disjointly_and_keep_the_test_split(data_root, tmp_path):
    config = FeedbackBenchConfig(data_root=data_root, runs=tmp_path / "runs")
    folder, traffic = halves(config, tmp_path / "runs")
    v1 = pd.read_csv(folder / "train.csv")
    assert len(v1) == 5 and len(traffic) == 5 and not set(v1["text"]) & set(traffic["text"])
    assert pd.read_csv(folder / "test.csv")["text"].tolist() == ["t1", "t2"]
    again, _ = halves(config, tmp_path / "again")
    assert pd.read_csv(again / "train.csv").equals(v1)  # seeded


def test_the_scripted_reviewer_labels_every_record_with_its_truth(tmp_path):
    records = [{"text": "a", "predicted": "positive", "scores": {"positive": 0.6, "negative": 0.4}},
               {"text": "b", "predicted": "positive", "scores": {"positive": 0.7, "negative": 0.3}}]
    out = tmp_path / "feedback.csv"
    counts = review(records, ["negative", "positive"], out, scripted_answers(records, {"a": "positive", "b": "negative"}),
                    io.StringIO())
    assert counts == {"accepted": 1, "corrected": 1, "none_of_these": 0, "skipped": 0, "left": 0}
    assert pd.read_csv(out).values.tolist() == [["a", "positive"], ["b", "negative"]]


def test_targets_and_markdown():
    r = {"ece": {"before": 0.08, "after": 0.03, "temperature": 1.4},
         "test": {"champion": {"accuracy": 0.80, "macro_f1": 0.79}, "challenger": {"accuracy": 0.82, "macro_f1": 0.80}},
         "feedback_holdout": {"champion": {"samples": 0}, "challenger": {"samples": 0}},
         "gate": {"promote": True, "macro_f1_change_points": 1.0, "reasons": []},
         "default_after": "2.0", "rows": {"v1_train": 10, "traffic": 10, "captured": 4,
                                          "reviewed": {"accepted": 3, "corrected": 1}},
         "capture": {"review_below": 0.9, "review_sample": 0.1}, "feedback": {"used_for_training": 3, "held_out": 1},
         "timings": {"train_v1_s": 1, "traffic_s": 1, "retrain_s": 1}, "cpu_class": "avx2", "finished": "today",
         "command": "python -m bench.feedback_bench"}
    assert [t.rsplit(" ", 1)[1] for t in targets(r)] == ["met", "met", "met"]
    r["test"]["challenger"]["accuracy"], r["default_after"] = 0.80, "1.0"
    assert [t.rsplit(" ", 1)[1] for t in targets(r)] == ["met", "missed", "missed"]
    assert "| v2 | 80.00% | 80.00 | - |" in markdown(r)


def test_missing_data_is_one_clear_error(tmp_path):
    from textclf.core.errors import UserError

    with pytest.raises(UserError, match="benchmark data not found"):
        FeedbackBenchConfig(data_root=tmp_path)
