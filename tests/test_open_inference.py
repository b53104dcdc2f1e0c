"""handlers/open_inference.py: Open Inference Protocol (KServe v2) bodies through the handler."""
from __future__ import annotations

import json

import pytest

from tests.test_handler import LABELS, body, make_handler, run
from training.tiny import make_tiny_bundle

TEXTS = ["the film was a delight", "refund not showing up", "card"]


def v2(data, shape=None, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape or [len(data)], "data": data}], **extra}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    return {"single": make_tiny_bundle(root / "single", labels=LABELS),
            "scope": make_tiny_bundle(root / "scope", labels=LABELS, detector="mahalanobis"),
            "multi": make_tiny_bundle(root / "multi", labels=LABELS, thresholds=[0.5, 0.4, 0.6])}


@pytest.fixture(scope="module")
def handler(bundles):
    return make_handler(bundles["single"])


def outputs(response: dict) -> dict:
    return {o["name"]: o for o in response["outputs"]}


def test_a_v2_body_gets_a_v2_response_with_the_same_answers_as_json(handler):
    [(status, kind, got), (_, _, plain)] = run(handler, [body(v2(TEXTS, id="req-7")), body({"texts": TEXTS})])
    assert status == 200 and kind == "application/json"
    assert (got["model_name"], got["model_version"], got["id"]) == ("tiny", "", "req-7")
    out = outputs(got)
    assert [o for o in out] == ["label", "score", "top_labels", "top_scores"]
    assert out["label"] == {"name": "label", "datatype": "BYTES", "shape": [3], "data": [p["label"] for p in plain]}
    assert out["score"]["datatype"] == "FP32" and out["score"]["data"] == [p["score"] for p in plain]
    assert out["top_labels"]["shape"] == out["top_scores"]["shape"] == [3, 3]
    assert out["top_labels"]["data"] == [name for p in plain for name in p["scores"]]
    assert out["top_scores"]["data"] == [s for p in plain for s in p["scores"].values()]


def test_parameters_nested_data_and_requested_outputs(handler):
    [(_, _, got)] = run(handler, [body(v2([[TEXTS[0]], [TEXTS[1]]], shape=[2, 1], parameters={"top_k": 1},
                                          outputs=[{"name": "label"}, {"name": "top_scores"}]))])
    out = outputs(got)
    assert list(out) == ["label", "top_scores"] and out["top_scores"]["shape"] == [2, 1] and "id" not in got


def test_multi_label_and_out_of_scope_outputs(bundles):
    [(_, _, multi)] = run(make_handler(bundles["multi"]), [body(v2(TEXTS))])
    labels = outputs(multi)["labels"]
    assert labels["datatype"] == "BYTES" and all(isinstance(json.loads(x), list) for x in labels["data"])
    [(_, _, scoped)] = run(make_handler(bundles["scope"]), [body(v2(TEXTS))])
    out = outputs(scoped)
    assert out["in_scope"]["datatype"] == "FP32" and out["out_of_scope"]["datatype"] == "BOOL"
    assert all(isinstance(x, bool) for x in out["out_of_scope"]["data"]) and out["in_scope"]["shape"] == [3]


@pytest.mark.parametrize("value, status, kind, message", [
    ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["a"]}]}, 400, "invalid_request",
     "datatype BYTES, got 'FP32'"),
    (v2(["a", "b"], shape=[3]), 400, "invalid_request", "has shape [3] but 2 values"),
    (v2(["a", "b"], shape=[1, 2]), 400, "invalid_request", "has shape [1, 2] but 2 values"),
    ({"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400, "invalid_request",
     "missing input 'text'"),
    ({"inputs": []}, 400, "invalid_request", "a list of one tensor named 'text'"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "data": ["a"]}]}, 400, "invalid_request", "needs a shape"),
    (v2([1, 2]), 400, "invalid_text", "inputs[0].data[0] must be a string"),
    (v2(["a", " "]), 400, "invalid_text", "inputs[0].data[1] is empty"),
    (v2(["a"], parameters={"top_k": 0}), 400, "invalid_top_k", "'top_k' must be an integer >= 1"),
    (v2(["a"], parameters={"topk": 2}), 400, "invalid_request", "unknown 'parameters' ['topk']"),
    (v2(["a"], outputs=[{"name": "logits"}]), 400, "invalid_request", "unknown output(s) ['logits']"),
    (v2(["a"], id=7), 400, "invalid_request", "'id' must be a string"),
    ({**v2(["a"]), "text": "b"}, 400, "invalid_request", "unknown field(s) ['text']"),
    (v2(["a"] * 65), 413, "too_many_texts", "65 texts; at most 64"),
])
def test_bad_v2_bodies_get_one_line_and_a_type_and_leave_the_batch_alone(handler, value, status, kind, message):
    [(bad_status, _, bad), (good_status, _, good)] = run(handler, [body(value), body(v2(TEXTS[:1]))])
    assert (bad_status, bad["type"]) == (status, kind) and message in bad["error"] and "\n" not in bad["error"]
    assert good_status == 200 and outputs(good)["label"]["shape"] == [1]
