"""Explanation requests and long texts through the handler: TorchServe's /explanations path (the `explain` request
header), mixed batches, the per-request limits, and a windows bundle's max_windows."""
from __future__ import annotations

import json

import pytest

from tests.test_handler import LABELS, body, make_context, make_handler
from training.tiny import make_tiny_bundle

TEXT = "the refund for my card is not showing up"


def run(handler, rows, explain=()):
    """Send one batch; requests whose index is in `explain` came to /explanations. [(status, body)] per request."""
    from ts.context import RequestProcessor

    ctx = make_context("", {})
    ctx.request_processor = [RequestProcessor({"explain": "True"} if i in explain else {}) for i in range(len(rows))]
    out = handler.handle(rows, ctx)
    return [(ctx.get_response_status(i)[0], json.loads(b)) for i, b in enumerate(out)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("requests")
    return {"single": make_tiny_bundle(root / "single", labels=LABELS),
            "multi": make_tiny_bundle(root / "multi", labels=LABELS, thresholds=[0.5, 0.4, 0.6]),
            "windows": make_tiny_bundle(root / "windows", labels=LABELS,
                                        long_texts={"policy": "windows", "stride": 16, "aggregate": "mean"})}


@pytest.fixture(scope="module")
def handler(bundles):
    return make_handler(bundles["single"], {"explain_max_words": 12, "explain_max_texts": 2})


def test_an_explanation_weighs_every_word_with_its_offsets(handler):
    [(status, got)] = run(handler, [body({"text": TEXT})], explain={0})
    [(_, predicted)] = run(handler, [body({"text": TEXT})])
    assert status == 200 and (got["label"], got["score"]) == (predicted["label"], predicted["score"])
    assert [a["text"] for a in got["attributions"]] == TEXT.split()
    assert all(TEXT[a["start"]:a["end"]] == a["text"] and isinstance(a["weight"], float) for a in got["attributions"])


def test_a_batch_may_mix_explanations_and_predictions_whichever_comes_first(handler):
    for explain in ({1}, {0, 2}):
        named = {"label": "neutral"} if 1 in explain else {}
        rows = [body({"text": TEXT}), body({"texts": [TEXT, "card"], **named}), body({"instances": [TEXT]})]
        got = run(handler, rows, explain=explain)
        assert [s for s, _ in got] == [200, 200, 200]
        for i, (_, answer) in enumerate(got):
            items = answer if isinstance(answer, list) else answer.get("explanations", answer.get("predictions", [answer]))
            assert all(("attributions" in x) == (i in explain) for x in items)
        if 1 in explain:
            assert [x["label"] for x in got[1][1]] == ["neutral", "neutral"]  # the label the request named
        if 2 in explain:
            assert list(got[2][1]) == ["explanations"]  # KServe v1's key for explanations


@pytest.mark.parametrize("value, status, kind", [
    ({"text": " ".join(["word"] * 13)}, 413, "too_many_words"),
    ({"texts": ["a", "b", "c"]}, 413, "too_many_texts"),
    ({"text": TEXT, "label": "refund"}, 400, "invalid_label"),
    ({"text": TEXT, "label": 3}, 400, "invalid_label"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}, 400, "invalid_request"),
])
def test_explanation_limits_answer_that_request_alone(handler, value, status, kind):
    [(bad_status, bad), (ok, good)] = run(handler, [body(value), body({"text": TEXT})], explain={0, 1})
    assert (bad_status, bad["type"], ok) == (status, kind, 200) and "attributions" in good


def test_label_is_not_a_prediction_field(handler):
    [(status, got)] = run(handler, [body({"text": TEXT, "label": "neutral"})])
    assert status == 400 and got["type"] == "invalid_request"


def test_multi_label_explains_each_predicted_label(bundles):
    [(status, got)] = run(make_handler(bundles["multi"]), [body({"text": TEXT})], explain={0})
    assert status == 200 and set(got) == {"labels", "explanations"}
    assert [e["label"] for e in got["explanations"]] == (got["labels"] or [got["explanations"][0]["label"]])


def test_a_windows_bundle_answers_a_long_text_and_refuses_one_beyond_max_windows(bundles):
    handler = make_handler(bundles["windows"], {"max_windows": 4, "max_length": 24})
    long = " ".join(["the film was a delight"] * 6)  # 3 windows of 24 tokens with a stride of 16
    too_long = " ".join(["the film was a delight"] * 60)
    got = run(handler, [body({"texts": ["card", long]}), body({"texts": ["card", too_long]}), body("card")])
    assert [s for s, _ in got] == [200, 413, 200]
    assert got[1][1]["type"] == "too_many_windows" and "text 1 spans" in got[1][1]["error"]
    assert got[0][1][0] == got[2][1]  # the refused request's neighbours keep their rows
    encoded = handler.scorer.encode([long])
    assert 1 < encoded.windows[0] <= 4
