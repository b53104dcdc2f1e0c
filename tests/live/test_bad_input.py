"""Bad input against the live server: each case gets its own status and a JSON {"error": ...} naming what
is wrong, a valid request batched with it (v1: batch_size 8, max_batch_delay 50 ms) is still answered,
and the worker never restarts. Cases already asserted the same way in test_rest.py are not repeated."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.live.conftest import NAME, V1_LABELS
from tests.live.test_rest import assert_prediction
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.keys import bearer, read_keys

pytestmark = pytest.mark.live
JSON, PLAIN = "application/json", "text/plain; charset=utf-8"
MAX_REQUEST_SIZE = 10485760  # config.properties

BAD = [  # id, body, content type, status, what the error says, its type
    ("empty-json", b"", JSON, 400, "body is empty", "invalid_text"),
    ("empty-plain", b"", PLAIN, 400, "body is empty", "invalid_text"),
    ("whitespace-text", b'{"text": " \\n\\t "}', JSON, 400, "text is empty", "invalid_text"),
    ("whitespace-in-texts", b'{"texts": ["ok", "   "]}', JSON, 400, "texts[1] is empty", "invalid_text"),
    ("no-text-field", b'{"top_k": 1}', JSON, 400, "needs exactly one of 'text', 'texts' or 'instances'",
     "invalid_request"),
    ("two-text-fields", b'{"text": "a", "texts": ["b"]}', JSON, 400, "needs exactly one of", "invalid_request"),
    ("text-number", b'{"text": 5}', JSON, 400, "text must be a string, got a number", "invalid_text"),
    ("text-null", b'{"text": null}', JSON, 400, "text must be a string, got null", "invalid_text"),
    ("text-list", b'{"text": ["a"]}', JSON, 400, "text must be a string, got a list", "invalid_text"),
    ("text-object", b'{"text": {"text": "a"}}', JSON, 400, "text must be a string, got an object", "invalid_text"),
    ("body-number", b"42", JSON, 400, "must be an object with 'text', 'texts' or 'instances', got a number",
     "invalid_request"),
    ("body-null", b"null", JSON, 400, "got null", "invalid_request"),
    ("texts-not-list", b'{"texts": "a"}', JSON, 400, "'texts' must be a list of strings, got a string",
     "invalid_request"),
    ("texts-non-string", b'{"texts": ["ok", 3]}', JSON, 400, "texts[1] must be a string, got a number", "invalid_text"),
    ("texts-over-limit", json.dumps({"texts": ["x"] * 65}).encode(), JSON, 413, "65 entries; at most 64 per request",
     "too_many_texts"),
    ("instances-bad-item", b'{"instances": [{"txt": "a"}]}', JSON, 400, "instances[0] must be a string or an object",
     "invalid_request"),
    ("invalid-json", b'{"text": "unterminated', JSON, 400, "body is not valid JSON", "invalid_json"),
    ("invalid-utf8-json", b'{"text": "\xff\xfe"}', JSON, 400, "body is not valid UTF-8", "invalid_encoding"),
    ("invalid-utf8-plain", b"caf\xe9", PLAIN, 400, "body is not valid UTF-8", "invalid_encoding"),
    # Each of the next three used to escape the parser and fail every request of its batch.
    ("lone-surrogate", b'{"text": "a \\ud800 b"}', JSON, 400, "text is not valid Unicode (lone surrogate",
     "invalid_text"),
    ("nested-too-deeply", b"[" * 100_000, JSON, 400, "nested too deeply", "invalid_json"),
    ("integer-too-long", b'{"text": "a", "top_k": ' + b"9" * 5000 + b"}", JSON, 400, "a number is too long",
     "invalid_json"),
    ("top-k-negative", b'{"text": "a", "top_k": -3}', JSON, 400, "'top_k' must be an integer >= 1, got -3",
     "invalid_top_k"),
    ("top-k-zero", b'{"text": "a", "top_k": 0}', JSON, 400, "'top_k' must be an integer >= 1, got 0", "invalid_top_k"),
    ("top-k-string", b'{"text": "a", "top_k": "2"}', JSON, 400, "'top_k' must be an integer >= 1, got a string",
     "invalid_top_k"),
    ("top-k-float", b'{"text": "a", "top_k": 1.5}', JSON, 400, "'top_k' must be an integer >= 1, got a number",
     "invalid_top_k"),
    ("top-k-typo", b'{"text": "a", "topk": 1}', JSON, 400, "unknown field(s) ['topk']", "invalid_request"),
]


def worker_identity(live) -> list:
    (described,) = live.rest.describe(NAME, "1.0")
    return sorted((w["id"], w["pid"], w["startTime"]) for w in described["workers"])


def headers(live, content_type: str | None = None) -> dict:
    h = bearer(read_keys(live.endpoints.key_file).inference)
    return dict(h, **({"Content-Type": content_type} if content_type else {}))


def send_with_valid(live, body: bytes, content_type: str) -> tuple[requests.Response, requests.Response]:
    """POST `body` and a valid request at the same moment, so that they share a batch."""
    url, start = f"{live.endpoints.inference_url}/predictions/{NAME}", threading.Barrier(2)

    def post(data: bytes, ctype: str) -> requests.Response:
        start.wait()
        return requests.post(url, data=data, headers=headers(live, ctype), timeout=60)

    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(post, body, content_type)
        good = pool.submit(post, b'{"text": "a perfectly valid request"}', JSON)
        return bad.result(), good.result()


@pytest.fixture
def unchanged_worker(live):
    before = worker_identity(live)
    yield
    assert worker_identity(live) == before, "the worker restarted"


@pytest.mark.parametrize("body, content_type, status, says, kind", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_rest_bad_input_is_refused_alone(live, unchanged_worker, body, content_type, status, says, kind):
    bad, good = send_with_valid(live, body, content_type)
    assert bad.status_code == status and bad.headers["Content-Type"].startswith("application/json")
    assert bad.json() == {"error": bad.json()["error"], "type": kind} and says in bad.json()["error"], bad.text
    assert good.status_code == 200
    assert_prediction(good.json())


@pytest.mark.parametrize("body, content_type", [
    (json.dumps({"text": "long " * 200_000}).encode(), JSON),  # 1 MB: cut to max_text_chars, then tokenized
    (json.dumps({"text": "ctrl \x00\x07\x1b[31m bidi \u202e emoji \U0001F600\U0001F389 zwj \u200d"}).encode(), JSON),
    ("ctrl \x00\x07 emoji \U0001F600 rtl \u05e9\u05dc\u05d5\u05dd".encode(), PLAIN),
    (b'"a bare JSON string is one text"', JSON),
], ids=["1MB-text", "control-and-emoji-json", "control-and-emoji-plain", "json-string"])
def test_rest_odd_but_valid_input_is_answered(live, unchanged_worker, body, content_type):
    odd, good = send_with_valid(live, body, content_type)
    assert odd.status_code == 200, odd.text
    assert_prediction(odd.json())
    assert good.status_code == 200


def test_top_k_above_label_count_is_clamped(live, unchanged_worker):
    answer = live.rest.predict(NAME, "hello", top_k=1000)
    assert_prediction(answer)
    assert len(answer["scores"]) == len(V1_LABELS)


def test_body_above_max_request_size_is_413_from_torchserve(live, unchanged_worker):
    """The frontend refuses it before any worker sees it: 0.12 answers 413 with an empty body (no JSON),
    so the client names the limit itself."""
    body = b'{"text": "' + b"a" * MAX_REQUEST_SIZE + b'"}'
    r = requests.post(f"{live.endpoints.inference_url}/predictions/{NAME}", data=body, headers=headers(live, JSON),
                      timeout=60)
    assert r.status_code == 413 and r.content == b""
    with pytest.raises(TorchServeError) as e:
        live.rest.post_prediction(NAME, body, JSON)
    assert e.value.status == 413 and e.value.kind == "RequestTooLarge"
    assert f"({len(body)} bytes) is larger than the server's max_request_size" in str(e.value)
    assert "\n" not in str(e.value)
    assert_prediction(live.rest.predict(NAME, "still serving"))


def test_unknown_version_is_404(live):
    with pytest.raises(TorchServeError) as e:
        live.rest.predict(NAME, "hello", version="7.7")
    assert (e.value.status, e.value.kind) == (404, "ModelVersionNotFoundException")
    assert "7.7" in e.value.message


def test_wrong_method_on_management_api_is_405(live):
    key = read_keys(live.endpoints.key_file).management
    for method, path in (("PUT", "/models"), ("PATCH", f"/models/{NAME}"), ("POST", f"/models/{NAME}/1.0")):
        r = requests.request(method, live.endpoints.management_url + path, headers=bearer(key),
                             timeout=30)
        assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowedException", (method, path)


def test_predictions_route_accepts_any_method(live):
    """A TorchServe 0.12 fact to know, not a choice of ours: /predictions hands GET/PUT/DELETE bodies to the
    handler like POST (so 405 exists only on the management API). The clients always POST."""
    r = requests.get(f"{live.endpoints.inference_url}/predictions/{NAME}", data=b'{"text": "hi"}',
                     headers=headers(live, JSON), timeout=30)
    assert r.status_code == 200
    assert_prediction(r.json())


# ---- the same over gRPC: no content type, the handler gets the raw bytes --------------------------------
# Bytes that do not start with { or [ are one plain text there, so a bare 42 or null is classified.
GRPC_BAD = [c for c in BAD if c[2] == JSON and c[0] not in ("empty-json", "body-number", "body-null")] + [
    ("empty", b"", JSON, 400, "body is empty", "invalid_text")]


@pytest.mark.parametrize("body, says, kind", [(c[1], c[4], c[5]) for c in GRPC_BAD], ids=[c[0] for c in GRPC_BAD])
def test_grpc_bad_input_is_refused_alone(live, unchanged_worker, body, says, kind):
    """gRPC carries no per-request status from TorchServe; the client raises the handler's error as
    INVALID_ARGUMENT (413 cases included), and a valid request batched with it is answered."""
    start = threading.Barrier(2)

    def call(data: bytes):
        start.wait()
        try:
            return live.grpc.predict_raw(NAME, data)
        except TorchServeError as e:
            return e

    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(call, [body, b'{"text": "a perfectly valid request"}'])
    assert isinstance(bad, TorchServeError) and bad.status == "INVALID_ARGUMENT" and says in bad.message
    assert bad.kind == kind
    assert_prediction(good)


def test_grpc_odd_but_valid_input_is_answered(live, unchanged_worker):
    for body in (json.dumps({"text": "long " * 200_000}).encode(), "ctrl \x00 emoji \U0001F600".encode(),
                 b'{"text": "a", "top_k": 1000}'):
        assert_prediction(live.grpc.predict_raw(NAME, body))


def test_grpc_body_above_max_request_size_is_named(live, unchanged_worker):
    with pytest.raises(TorchServeError) as e:
        live.grpc.predict_raw(NAME, b"a" * (MAX_REQUEST_SIZE + 1024))
    assert e.value.status == "CANCELLED" and e.value.kind == "RequestTooLarge"
    assert "max_request_size" in e.value.message and str(MAX_REQUEST_SIZE + 1024) in e.value.message


@pytest.mark.parametrize("name, version, kind", [(NAME + "-missing", None, "ModelNotFoundException"),
                                                 (NAME, "7.7", "ModelVersionNotFoundException")])
def test_grpc_unknown_model_or_version_is_not_found(live, name, version, kind):
    with pytest.raises(TorchServeError) as e:
        live.grpc.predict(name, "hello", version=version)
    assert (e.value.status, e.value.kind) == ("NOT_FOUND", kind)
