"""Property-based fuzzing of the request path: whatever arrives, every request gets a 200 with answers or a 4xx
with a JSON error body; nothing raises, nothing is dropped. In-process, through parse_request and through the
whole handler (tests/live/test_bad_input.py sends hand-picked bad input to a real TorchServe)."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.config import HandlerConfig
from handlers.parsing import ErrorType, parse_request
from tests.test_handler import LABELS, body, make_handler, run
from training.tiny import make_tiny_bundle

PARSE_CASES, HANDLER_CASES = 2000, 200  # generated inputs per test (the README's reliability figures quote them)
STATUSES = {e.status for e in ErrorType}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
# Objects with the fields a request may have, holding anything; plus arbitrary JSON, text and bytes.
request_objects = st.fixed_dictionaries({}, optional={
    "text": json_values, "texts": json_values | st.lists(st.text(max_size=30), max_size=80),
    "instances": json_values | st.lists(st.text(max_size=30), max_size=5), "top_k": json_values,
    "extra": json_values})
# Well-formed requests of each shape, with and without top_k: without them nearly every generated request is
# refused, and the answers of the list and KServe shapes would go unchecked.
texts = st.text(min_size=1, max_size=30).filter(str.strip)
top_k = {"top_k": st.integers(1, 5)}
valid_requests = (st.fixed_dictionaries({"text": texts}, optional=top_k)
                  | st.fixed_dictionaries({"texts": st.lists(texts, min_size=1, max_size=8)}, optional=top_k)
                  | st.fixed_dictionaries({"instances": st.lists(texts | st.fixed_dictionaries({"text": texts}),
                                                                 min_size=1, max_size=8)}, optional=top_k))
bodies = (valid_requests | request_objects | json_values | st.text(max_size=200) | st.binary(max_size=200)
          | (valid_requests | request_objects).map(lambda o: json.dumps(o, allow_nan=True).encode()))
rows = bodies.map(lambda b: {"body": b}) | bodies.map(lambda b: {"data": b}) | st.just({}) \
    | st.dictionaries(st.sampled_from(["body", "data", "content-type"]), bodies, max_size=2)


@settings(max_examples=PARSE_CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_parse_request_answers_every_input(row):
    config = HandlerConfig()
    parsed = parse_request(row, config)
    if parsed.error is not None:
        assert parsed.error.status in STATUSES and 400 <= parsed.error.status < 500
        assert isinstance(parsed.error.message, str) and parsed.error.message
        assert not parsed.texts
    else:
        assert parsed.texts and all(isinstance(t, str) for t in parsed.texts)
        assert len(parsed.texts) <= config.max_texts_per_request
        assert parsed.top_k is None or (isinstance(parsed.top_k, int) and parsed.top_k >= 1)


def predictions(answer) -> list:
    """The prediction objects of a 200 body, whichever of its three shapes it has."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict) and set(answer) == {"predictions"}:
        return answer["predictions"]
    return [answer]


def assert_answer(answer, labels, texts: int | None = None, top_k: int | None = None) -> None:
    """A 200 body holds well-formed predictions of this model: a label of its label set with its score, and
    scores in [0, 1], best first, that sum to 1 over every label (less over a top_k of them). With `texts` (and
    `top_k`), the body holds that many predictions, each with min(top_k, labels) scores."""
    found = predictions(answer)
    assert found and all(isinstance(p, dict) for p in found), answer
    if texts is not None:
        assert len(found) == texts, answer
    for p in found:
        assert set(p) == {"label", "score", "scores"}, p
        scores = p["scores"]
        assert scores and set(scores) <= set(labels) and all(0.0 <= v <= 1.0 for v in scores.values()), p
        assert list(scores.values()) == sorted(scores.values(), reverse=True), p
        assert p["label"] == next(iter(scores)) and p["score"] == scores[p["label"]], p
        if len(scores) == len(labels):
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4), p
        else:
            assert sum(scores.values()) <= 1.0 + 1e-4, p
        if texts is not None:
            assert len(scores) == min(top_k or len(labels), len(labels)), p


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    return make_handler(make_tiny_bundle(tmp_path_factory.mktemp("fuzz") / "export", labels=LABELS))


@settings(max_examples=HANDLER_CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(rows, min_size=1, max_size=4))
def test_handler_answers_every_request_of_a_batch(handler, batch):
    results = run(handler, batch)  # one body per request, in order, each valid JSON (run() checks both)
    config = HandlerConfig()  # the handler's: its bundle sets no handler options
    for row, (status, content_type, answer) in zip(batch, results, strict=True):
        assert content_type == "application/json"
        parsed = parse_request(row, config)
        if status == 200:
            # As many predictions as the request has texts, each with its top_k scores.
            assert parsed.error is None
            assert_answer(answer, LABELS, texts=len(parsed.texts), top_k=parsed.top_k)
        else:
            assert 400 <= status < 500 and set(answer) == {"error", "type"}
            assert parsed.error is not None and (status, answer["type"]) == (parsed.error.status, parsed.error.type.code)
    good = body({"text": "still answered"})  # the handler is unharmed by what it just saw
    assert run(handler, [good])[0][0] == 200
