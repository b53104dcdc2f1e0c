"""textclf.pipelines.review: a scripted terminal session over a review queue, resumed where it stopped."""
from __future__ import annotations

import csv
import io
import json

import pytest

from textclf.core.errors import UserError
from textclf.pipelines.review import read_queue, review

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
    assert counts == {"accepted": 1, "corrected": 2, "skipped": 0, "left": 1}
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
