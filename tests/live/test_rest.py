"""Predictions over REST in every body form the handler accepts, against the session's v1."""

import json

import pytest
import requests

from tests.live.conftest import NAME, V1_LABELS
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.keys import bearer, read_keys

pytestmark = pytest.mark.live


def assert_prediction(p: dict, labels=V1_LABELS):
    assert set(p) == {"label", "score", "scores"}
    assert set(p["scores"]) == labels
    assert p["label"] == max(p["scores"], key=p["scores"].get)
    assert p["score"] == p["scores"][p["label"]]
    assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_health(live):
    assert live.rest.health() == {"status": "Healthy"}


def test_text_plain_and_json_text_agree(live):
    plain = live.rest.predict(NAME, "What a wonderful day!", plain=True)
    as_json = live.rest.predict(NAME, "What a wonderful day!")
    assert_prediction(plain)
    assert plain["scores"] == pytest.approx(as_json["scores"], abs=1e-5)


def test_texts_answer_in_order(live):
    texts = ["the film was a delight", "terrible service, I want a refund now", "ok"]
    answers = live.rest.predict(NAME, texts=texts)
    assert isinstance(answers, list) and len(answers) == len(texts)
    for text, answer in zip(texts, answers, strict=False):
        assert_prediction(answer)
        assert answer["scores"] == pytest.approx(live.rest.predict(NAME, text)["scores"], abs=1e-4)


def test_kserve_v1_instances(live):
    answer = live.rest.predict(NAME, instances=["a delight", {"text": "dull and lifeless"}])
    assert set(answer) == {"predictions"} and len(answer["predictions"]) == 2
    for p in answer["predictions"]:
        assert_prediction(p)


def test_top_k_limits_scores(live):
    p = live.rest.predict(NAME, "What a wonderful day!", top_k=1)
    assert list(p["scores"]) == [p["label"]]


def test_versioned_url_reaches_v1(live):
    assert_prediction(live.rest.predict(NAME, "hello", version="1.0"))
    assert_prediction(live.rest.predict(NAME, instances=["hello"], version="1.0")["predictions"][0])


@pytest.mark.parametrize("body, content_type, expected", [
    (b'{"txt": "typo"}', "application/json", "unknown field"),
    (b'{"texts": []}', "application/json", "empty"),
    (b'{"text": "a", "top_k": 0}', "application/json", "top_k"),
    (b"   ", "text/plain", "empty"),
])
def test_malformed_body_gets_400_with_handler_message(live, body, content_type, expected):
    with pytest.raises(TorchServeError) as e:
        live.rest.post_prediction(NAME, body, content_type)
    assert e.value.status == 400
    assert expected in e.value.message and "\n" not in str(e.value)


def test_too_many_texts_gets_413_and_the_client_splits_them(live):
    with pytest.raises(TorchServeError) as e:
        live.rest.post_prediction(NAME, json.dumps({"texts": ["x"] * 65}).encode(), "application/json")
    assert e.value.status == 413
    # The client sends a longer list in requests of the handler's limit, answers in order.
    texts = [f"text number {i}" for i in range(65)]
    split = live.rest.predict(NAME, texts=texts)
    assert len(split) == 65 and split[64] == live.rest.predict(NAME, texts[64])


def test_unknown_model_is_404_with_torchserve_message(live):
    with pytest.raises(TorchServeError) as e:
        live.rest.predict(NAME + "-missing", "hello")
    assert e.value.status == 404 and "not found" in e.value.message.lower()


def test_error_body_is_json_with_error_and_type(live):
    key = read_keys(live.endpoints.key_file).inference
    r = requests.post(f"{live.endpoints.inference_url}/predictions/{NAME}", data=b'{"text": 5}',
                      headers={**bearer(key), "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error": "text must be a string, got a number", "type": "invalid_text"}
    with pytest.raises(TorchServeError) as e:
        live.rest.post_prediction(NAME, json.dumps({"texts": ["x"] * 65}).encode(), "application/json")
    assert (e.value.status, e.value.kind) == (413, "too_many_texts")  # the client carries the type
