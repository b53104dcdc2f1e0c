"""textclf.pipelines.review: a scripted terminal session over a review queue, resumed where it stopped, and
"none of these" written with the model's out-of-scope label."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from textclf.core.errors import UserError
from textclf.pipelines.review import label_names, out_of_scope_label, read_queue, review
from training.tiny import make_tiny_bundle

LABELS = ["negative", "neutral", "positive"]


def queue(tmp_path, n=4):
    path = tmp_path / "q.jsonl"
    records = [{"text": f"text {i}", "predicted": "positive", "score": 0.5,
                "scores": {"positive": 0.5, "negative": 0.3, "neutral": 0.2}} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rows(path):
    with open(path, newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def test_accept_correct_skip_and_resume(tmp_path):
    out = tmp_path / "feedback.csv"
    records = read_queue(queue(tmp_path))
    # Enter accepts, 2 is the second label shown, an unknown name is asked again, then q stops.
    counts = review(records, LABELS, out, io.StringIO("\n2\nbogus\nneutral\nq\n"), io.StringIO())
    assert counts == {"accepted": 1, "corrected": 2, "none_of_these": 0, "skipped": 0, "left": 1}
    assert rows(out) == [("text 0", "positive"), ("text 1", "negative"), ("text 2", "neutral")]
    screen = io.StringIO()
    counts = review(records, LABELS, out, io.StringIO("s\n"), screen)  # resumes at text 3
    assert "[1/1, 3 done before] text 3" in screen.getvalue() and counts["skipped"] == 1
    assert review(records, LABELS, out, io.StringIO(""), io.StringIO())["left"] == 0  # nothing left to ask
    assert len(rows(out)) == 3


def test_end_of_input_saves_and_stops(tmp_path):
    out = tmp_path / "feedback.csv"
    counts = review(read_queue(queue(tmp_path)), LABELS, out, io.StringIO("a\n"), io.StringIO())
    assert counts["accepted"] == 1 and counts["left"] == 3 and rows(out) == [("text 0", "positive")]


def test_bad_queue_lines_and_multi_label_queues_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "predicted": "a"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not a review record"):
        read_queue(bad)
    multi = tmp_path / "multi.jsonl"
    multi.write_text('{"text": "x", "predicted": ["a", "b"]}\n')
    with pytest.raises(UserError, match="multi-label records"):
        read_queue(multi)


def test_none_of_these_and_an_out_of_scope_answer_accepted(tmp_path):
    path = queue(tmp_path, n=3)
    # text 2 was answered out of scope when served (handlers/out_of_scope.py): its label is the served one.
    records = read_queue(path)
    records[2].update(predicted="out_of_scope", score=0.97, in_scope=0.03, out_of_scope=True)
    out, screen = tmp_path / "feedback.csv", io.StringIO()
    counts = review(records, LABELS, out, io.StringIO("o\n\n\n"), screen, out_of_scope="oos")
    assert rows(out) == [("text 0", "oos"), ("text 1", "positive"), ("text 2", "oos")]
    assert counts == {"accepted": 2, "corrected": 0, "none_of_these": 1, "skipped": 0, "left": 0}
    shown = screen.getvalue()
    assert "o none of these" in shown and "answered out of scope: none of the model's labels (in-scope score 0.03)" in shown
    assert "label [Enter: none of these, 1-3," in shown and "1 none of these, 0 skipped" in shown


@pytest.fixture
def run_copy(roberta_run, tmp_path):
    """The tiny run's run.json and model/config.json: all the review tool reads of a run."""
    copy = tmp_path / "run"
    (copy / "model").mkdir(parents=True)
    shutil.copy(roberta_run / "run.json", copy / "run.json")
    shutil.copy(roberta_run / "model" / "config.json", copy / "model" / "config.json")
    return copy


def test_none_of_these_is_the_out_of_scope_label_of_the_run(run_copy):
    labels = label_names(run_copy)
    assert labels == ["mid", "neg", "pos"]
    assert out_of_scope_label(run_copy, labels, None) == "out_of_scope"  # no class learnt: what answers say
    assert out_of_scope_label(run_copy, labels, "none") == "none"
    meta = json.loads((run_copy / "run.json").read_text())
    meta["out_of_scope"] = {**(meta.get("out_of_scope") or {}), "label": "mid"}  # as if "mid" were its oos class
    (run_copy / "run.json").write_text(json.dumps(meta))
    assert out_of_scope_label(run_copy, labels, None) == "mid"  # the next training learns more of that class
    assert out_of_scope_label(run_copy, labels, "mid") == "mid"
    with pytest.raises(UserError, match="'neg' is one of the model's in-scope labels"):
        out_of_scope_label(run_copy, labels, "neg")


def test_none_of_these_is_the_out_of_scope_class_of_a_bundle(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "export", labels=LABELS, detector="max_prob")
    assert out_of_scope_label(bundle, LABELS, None) == "out_of_scope"
    card = json.loads((bundle / "model_card.json").read_text())
    card["out_of_scope"]["oos_class"] = 1  # a run trained with --out-of-scope-label neutral
    (bundle / "model_card.json").write_text(json.dumps(card))
    name = out_of_scope_label(bundle, label_names(bundle), None)
    out = tmp_path / "feedback.csv"
    review(read_queue(queue(tmp_path, n=1)), LABELS, out, io.StringIO("o\n"), io.StringIO(), out_of_scope=name)
    assert rows(out) == [("text 0", "neutral")]
