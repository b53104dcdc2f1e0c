"""Review capture (handlers/capture.py): off by default and then writes nothing anywhere; on, it queues the
texts below the score threshold, those answered out of scope, plus a sample, in a 0600 file of its own, rotated at
its size."""
from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from handlers.capture import ReviewConfig, ReviewConfigError, ReviewQueue
from tests.test_handler import LABELS, body, make_context, run
from training.tiny import CORPUS, make_tiny_bundle

SECRET = "my card number is 4111 1111 1111 1111"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("review") / "export", labels=LABELS)


def handler_with(bundle, review=None):
    from handlers.text_classifier import TextClassifierHandler

    handler = TextClassifierHandler()
    handler.initialize(make_context(bundle, {"review": review} if review is not None else {}))
    return handler


def files_under(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_capture_off_writes_no_text_anywhere(bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # where a default queue would go
    with caplog.at_level(logging.DEBUG):
        handler = handler_with(bundle)
        assert handler.review is None
        assert run(handler, [body({"text": SECRET}), body({"texts": [SECRET, "why"]})])[0][0] == 200
    assert files_under(tmp_path) == []
    assert "4111" not in caplog.text


def test_capture_on_queues_low_scores_with_what_review_needs(bundle, tmp_path, caplog):
    queue = tmp_path / "q" / "clf.jsonl"
    with caplog.at_level(logging.WARNING):
        handler = handler_with(bundle, {"review": True, "review_queue": str(queue), "review_below": 1.0,
                                        "review_sample": 0.0})
    assert "review capture is ON" in caplog.text
    results = run(handler, [body({"text": SECRET}), body({"texts": ["why", "a dull script"]}), body({"texts": 5})])
    records = [json.loads(line) for line in queue.read_text().splitlines()]
    assert [r["text"] for r in records] == [SECRET, "why", "a dull script"]
    first = records[0]
    assert first["predicted"] == results[0][2]["label"] and first["reason"] == "low_confidence"
    assert first["model"] == "tiny" and set(first["scores"]) <= set(LABELS) and first["score"] == results[0][2]["score"]
    assert stat.S_IMODE(os.stat(queue).st_mode) == 0o600


def test_nothing_above_the_threshold_without_a_sample(bundle, tmp_path):
    queue = tmp_path / "clf.jsonl"
    handler = handler_with(bundle, {"review": True, "review_queue": str(queue), "review_below": 0.0,
                                    "review_sample": 0.0})
    run(handler, [body({"text": SECRET})])
    assert not queue.exists()


def test_queue_rotates_and_keeps_its_backups_bounded(tmp_path):
    config = ReviewConfig(review=True, review_queue=str(tmp_path / "q.jsonl"), review_max_mb=0.0005, review_backups=2)
    queue = ReviewQueue(config, "clf", "1.0", seed=0)
    answer = {"label": "positive", "score": 0.4, "scores": {"positive": 0.4}}
    for i in range(40):
        queue.append([queue.record(f"text {i} " + "x" * 100, answer, "low_confidence")])
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert names == ["q.jsonl", "q.jsonl.1", "q.jsonl.2"]
    assert all(p.stat().st_size <= 500 + 200 for p in tmp_path.glob("q.jsonl*"))
    last = json.loads((tmp_path / "q.jsonl").read_text().splitlines()[-1])
    assert last["text"].startswith("text 39 ")  # the newest record is never the one dropped


def test_sample_keeps_about_its_share(tmp_path):
    queue = ReviewQueue(ReviewConfig(review=True, review_queue=str(tmp_path / "q.jsonl"), review_below=0.0,
                                     review_sample=0.1), "clf", "1.0", seed=1)
    kept = [queue.keep({"score": 0.99}) for _ in range(5000)]
    assert 400 < kept.count("sample") < 600 and set(kept) == {"sample", None}


def test_out_of_scope_answers_are_kept_whatever_their_score(tmp_path):
    queue = ReviewQueue(ReviewConfig(review=True, review_queue=str(tmp_path / "q.jsonl"), review_below=0.5,
                                     review_sample=0.0), "clf", "1.0", seed=0)
    out = {"label": "out_of_scope", "score": 0.99, "scores": {"positive": 0.7}, "in_scope": 0.01, "out_of_scope": True}
    assert queue.keep(out) == "out_of_scope"
    assert queue.keep({**out, "out_of_scope": False}) is None  # a confident in-scope answer: not kept
    assert queue.keep({**out, "score": 0.2, "out_of_scope": False}) == "low_confidence"
    record = queue.record("what is the weather", out, "out_of_scope")
    assert record["out_of_scope"] is True and record["in_scope"] == 0.01 and record["predicted"] == "out_of_scope"
    plain = queue.record("x", {"label": "positive", "score": 0.2, "scores": {"positive": 0.2}}, "low_confidence")
    assert "out_of_scope" not in plain and "in_scope" not in plain  # bundles without a detector: as before


def test_the_handler_queues_its_out_of_scope_answers(tmp_path):
    detecting = make_tiny_bundle(tmp_path / "detecting", labels=LABELS, detector="mahalanobis")
    queue = tmp_path / "q.jsonl"
    handler = handler_with(detecting, {"review": True, "review_queue": str(queue), "review_below": 0.0,
                                       "review_sample": 0.0})
    far = "qqq zzz xxxx vvvv 12345 %%%% ####"  # tokens the tiny model never saw together: out of scope
    [(_, _, answers)] = run(handler, [body({"texts": [CORPUS[0], far]})])
    assert [a["out_of_scope"] for a in answers] == [False, True]
    [record] = [json.loads(line) for line in queue.read_text().splitlines()]
    assert record["text"] == far and record["reason"] == "out_of_scope" and record["out_of_scope"] is True
    assert record["predicted"] == "out_of_scope" and record["in_scope"] == answers[1]["in_scope"]


@pytest.mark.parametrize("section, message", [
    ({"review": "yes"}, "must be true or false"),
    ({"review_below": 1.5}, "review_below' must be a number from 0 to 1"),
    ({"review_sample": -0.1}, "review_sample"),
    ({"review_max_mb": 0}, "review_max_mb' must be positive"),
    ({"capture": True}, "unknown review option"),
])
def test_review_section_validation(section, message):
    with pytest.raises(ReviewConfigError, match=message):
        ReviewConfig.from_model_yaml({"review": section})
