"""The clients' retry, key-recovery and error logic without a TorchServe: a fake requests.Session replays
scripted answers and records what was sent, time.sleep is recorded instead of slept, and a closed
loopback port stands for a server that is not running (REST and gRPC). A fake handler that enforces its
texts-per-request limit checks how both clients split long lists."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import grpc
import pytest
import requests

from tests.test_keys import PAST, FakeTokenApi, write_keys
from textclf.core.errors import Failure
from textclf.core.options import run
from textclf.torchserve import grpc_client as grpc_module
from textclf.torchserve import keys, rest
from textclf.torchserve.errors import ServerUnreachable, TokenRefused, TorchServeError
from textclf.torchserve.ports import free_ports
from textclf.torchserve.rest import TorchServeClient

INF, MGMT = "http://127.0.0.1:8080", "http://127.0.0.1:8081"
INVALID_KEY = {"code": 400, "type": "InvalidKeyException",
               "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}
WORKER_DIED = {"code": 507, "type": "InternalServerException", "message": "Worker died."}
ANSWER = {"label": "positive", "score": 0.9}


def response(status: int, body: dict | str | bytes = b"") -> requests.Response:
    r = requests.Response()
    r.status_code, r.reason = status, {200: "OK", 413: "Request Entity Too Large"}.get(status, "")
    r._content = json.dumps(body).encode() if isinstance(body, dict) else (
        body.encode() if isinstance(body, str) else body)
    return r


class FakeSession:
    """Stands in for requests.Session: each request takes the next scripted item, a (status, body) answer
    or an exception to raise; a callable item is called first (to change key_file.json mid-call)."""

    def __init__(self, *script):
        self.script, self.sent, self.timeouts = list(script), [], []

    def request(self, method, url, headers=None, timeout=None, **kwargs):
        prepared = requests.Request(method, url, headers=headers, **kwargs).prepare()
        self.sent.append(prepared)
        self.timeouts.append(timeout)
        item = self.script.pop(0)
        item = item() if callable(item) else item
        if isinstance(item, Exception):
            raise item
        r = response(*item)
        r.url, r.request = prepared.url, prepared
        return r

    def auth(self) -> list[str | None]:
        return [p.headers.get("Authorization") for p in self.sent]


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(rest.time, "sleep", slept.append)
    return slept


@pytest.fixture
def key_file(tmp_path):
    return write_keys(tmp_path / "key_file.json")


def rotated(key_file, inference: str, answer=(400, INVALID_KEY)):
    """A scripted answer that first rewrites key_file.json with a new inference key (the server restarted
    or the key was rotated between the client's read and its request)."""
    def rotate():
        write_keys(key_file, inference=inference)
        return answer

    return rotate


def client(session: FakeSession, key_file, retries: int = 3, backoff_s: float = 0.5) -> TorchServeClient:
    return TorchServeClient(INF, MGMT, key_file, timeout=7.0, retries=retries, backoff_s=backoff_s, session=session)


# ---- retries -----------------------------------------------------------------------------------------------
def test_unavailable_is_retried_with_doubling_backoff_then_raised(key_file, sleeps):
    session = FakeSession(*[(503, {"code": 503, "message": "Model \"clf\" has no worker"})] * 4)
    with pytest.raises(TorchServeError) as e:
        client(session, key_file).predict("clf", "hi")
    assert (e.value.status, e.value.message) == (503, 'Model "clf" has no worker')
    assert len(session.sent) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_worker_died_and_unavailable_share_one_budget_and_can_succeed(key_file, sleeps):
    died_500 = {"code": 500, "type": "InternalServerException", "message": "Worker died."}
    session = FakeSession((507, WORKER_DIED), (503, ""), (500, died_500), (200, ANSWER))
    assert client(session, key_file).predict("clf", "hi") == ANSWER
    assert len(session.sent) == 4 and sleeps == [0.5, 1.0, 2.0]
    assert {p.body for p in session.sent} == {b'{"text": "hi"}'}  # the same request each time


def test_retries_zero_sends_once(key_file, sleeps):
    session = FakeSession((503, ""))
    with pytest.raises(TorchServeError):
        client(session, key_file, retries=0).predict("clf", "hi")
    assert len(session.sent) == 1 and sleeps == []


@pytest.mark.parametrize("status, body", [(500, {"code": 500, "message": "CUDA out of memory"}),
                                          (507, {"code": 507, "message": "Insufficient storage"}),
                                          (400, {"error": "text is empty", "type": "invalid_text"}),
                                          (404, {"code": 404, "type": "ModelNotFoundException",
                                                 "message": "Model not found: clf"}),
                                          (429, "")])
def test_other_errors_are_not_retried(key_file, sleeps, status, body):
    session = FakeSession((status, body))
    with pytest.raises(TorchServeError) as e:
        client(session, key_file).predict("clf", "hi")
    assert e.value.status == status and len(session.sent) == 1 and sleeps == []


@pytest.mark.parametrize("call", [lambda c: c.register("clf", "clf-1.0.mar"), lambda c: c.scale("clf", "1.0", 2),
                                  lambda c: c.unregister("clf", None), lambda c: c.set_default("clf", "1.0"),
                                  lambda c: c.health()],
                         ids=["register", "scale", "unregister", "set-default", "health"])
def test_management_and_health_are_never_retried(key_file, sleeps, call):
    session = FakeSession((503, {"code": 503, "message": "busy"}))
    with pytest.raises(TorchServeError, match="TorchServe 503: busy"):
        call(client(session, key_file))
    assert len(session.sent) == 1 and sleeps == []


@pytest.mark.parametrize("call, answer", [(lambda c: c.describe("clf"), []), (lambda c: c.list_models(), {"models": []})],
                         ids=["describe", "models"])
def test_read_only_management_calls_retry_a_concurrent_modification(key_file, sleeps, call, answer):
    """TorchServe 0.12 answers a describe that races a worker starting or stopping with this 500."""
    session = FakeSession((500, {"code": 500, "type": "ConcurrentModificationException"}), (200, answer))
    call(client(session, key_file))
    assert len(session.sent) == 2 and sleeps == [0.5]


def test_a_timeout_is_never_sent_again(key_file, sleeps):
    session = FakeSession(requests.ReadTimeout("read timed out"), (200, ANSWER))
    with pytest.raises(TorchServeError) as e:
        client(session, key_file).predict("clf", "hi")
    assert e.value.status == "timeout" and isinstance(e.value, Failure)
    assert str(e.value) == f"TorchServe timeout: no answer within 7s to POST {INF}/predictions/clf; not sent again"
    assert len(session.sent) == 1 and sleeps == [] and session.timeouts == [7.0]


def test_connection_errors_are_retried_for_predictions(key_file, sleeps):
    # ConnectTimeout is a Timeout too, but the request never reached the server: safe to send again.
    session = FakeSession(requests.ConnectionError("refused"), requests.ConnectTimeout("connect"), (200, ANSWER))
    assert client(session, key_file).predict("clf", "hi") == ANSWER
    assert len(session.sent) == 3 and sleeps == [0.5, 1.0]


def test_prediction_to_a_server_that_stays_down_is_unreachable_after_the_retries(key_file, sleeps):
    session = FakeSession(*[requests.ConnectionError("refused")] * 4)
    with pytest.raises(ServerUnreachable) as e:
        client(session, key_file).predict("clf", texts=["a", "b"])
    assert str(e.value) == (f"cannot reach TorchServe at {INF} (ConnectionError): is it running? "
                            "(start it with `textclf serve`)")
    assert len(session.sent) == 4 and sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("call, url", [(lambda c: c.set_default("clf", "1.0"), MGMT), (lambda c: c.health(), INF)])
def test_other_calls_to_a_server_that_is_down_fail_at_once(key_file, sleeps, call, url):
    session = FakeSession(requests.ConnectionError("refused"))
    with pytest.raises(ServerUnreachable, match=f"^cannot reach TorchServe at {url} "):
        call(client(session, key_file))
    assert len(session.sent) == 1 and sleeps == []


def test_invalid_retry_settings_are_refused(key_file):
    for kwargs in ({"retries": -1}, {"backoff_s": -0.1}, {"timeout": 0}):
        with pytest.raises(ValueError):
            TorchServeClient(INF, MGMT, key_file, **kwargs)


# ---- keys --------------------------------------------------------------------------------------------------
def test_each_api_gets_its_own_key(key_file):
    session = FakeSession((200, ANSWER), (200, {"status": "Healthy"}), (200, {"models": []}), (200, "[]"))
    c = client(session, key_file)
    c.predict("clf", "hi"), c.health(), c.list_models(), c.describe("clf")
    assert session.auth() == ["Bearer i1", "Bearer i1", "Bearer m1", "Bearer m1"]


def test_without_a_key_file_no_token_is_sent(tmp_path):
    session = FakeSession((200, {"status": "Healthy"}))
    assert client(session, tmp_path / "absent.json").health() == {"status": "Healthy"}
    assert session.auth() == [None]


def test_refused_key_is_reread_from_the_file_once_it_changed(key_file, sleeps):
    session = FakeSession(rotated(key_file, "i2"), (200, ANSWER))
    assert client(session, key_file).predict("clf", "hi") == ANSWER
    assert session.auth() == ["Bearer i1", "Bearer i2"] and sleeps == []


def test_refused_expired_key_is_refreshed_through_the_token_api(key_file, monkeypatch):
    token_api = FakeTokenApi(key_file)
    monkeypatch.setattr(keys.requests, "get", token_api)

    def expired():
        write_keys(key_file, management_expiry=PAST)
        return 400, INVALID_KEY

    session = FakeSession(expired, (200, {"models": []}))
    assert client(session, key_file).list_models() == []
    assert session.auth() == ["Bearer m1", "Bearer fresh-management"]
    assert [(c["url"], c["params"], c["headers"]) for c in token_api.calls] == [
        (f"{MGMT}/token", {"type": "management"}, {"Authorization": "Bearer a1"})]


def test_wrong_key_is_refused_in_one_line(key_file, monkeypatch):
    monkeypatch.setattr(keys.requests, "get", FakeTokenApi(key_file))
    session = FakeSession((400, INVALID_KEY))
    with pytest.raises(TokenRefused) as e:
        client(session, key_file).predict("clf", "hi")
    message = str(e.value)
    assert message.startswith("token refused: TorchServe answered 400 InvalidKeyException (Token Authorization "
                              "failed. Token either incorrect, expired, or not provided correctly) — the key in ")
    assert str(key_file) in message and "\n" not in message and len(session.sent) == 1


def test_a_key_is_recovered_only_once(key_file):
    session = FakeSession(rotated(key_file, "i2"), rotated(key_file, "i3"), (200, ANSWER))
    with pytest.raises(TokenRefused):
        client(session, key_file).predict("clf", "hi")
    assert session.auth() == ["Bearer i1", "Bearer i2"]


def test_key_recovery_does_not_spend_a_retry(key_file, sleeps):
    session = FakeSession((503, ""), rotated(key_file, "i2"), (503, ""), (200, ANSWER))
    assert client(session, key_file, retries=2).predict("clf", "hi") == ANSWER
    assert session.auth() == ["Bearer i1", "Bearer i1", "Bearer i2", "Bearer i2"] and sleeps == [0.5, 1.0]


# ---- error messages ----------------------------------------------------------------------------------------
def test_413_without_body_is_explained(key_file):
    session = FakeSession((413, b""))
    with pytest.raises(TorchServeError) as e:
        client(session, key_file).predict("clf", texts=["x" * 100])
    size = len(session.sent[0].body)
    assert (e.value.status, e.value.kind) == (413, "RequestTooLarge")
    assert e.value.message.startswith(f"request body ({size} bytes) is larger than the server's max_request_size")


def test_413_with_a_body_keeps_torchserves_message(key_file):
    session = FakeSession((413, {"code": 413, "type": "X", "message": "too many texts"}))
    with pytest.raises(TorchServeError, match="^TorchServe 413 X: too many texts$"):
        client(session, key_file).predict("clf", "hi")


@pytest.mark.parametrize("body, says", [({"error": "text must be a string, got a number", "type": "invalid_text"},
                                         "TorchServe 400 invalid_text: text must be a string, got a number"),
                                        ("bad\nrequest\n", "TorchServe 400: bad request")])
def test_error_is_one_line_from_json_or_text(key_file, body, says):
    with pytest.raises(TorchServeError) as e:
        client(FakeSession((400, body)), key_file).predict("clf", "hi")
    assert str(e.value) == says


# ---- long lists: split into requests the handler takes ------------------------------------------------------
class FakeHandler:
    """Answers like the handler with max_texts_per_request `limit`: one answer per text ({"label": text}), in
    order, or 413 too_many_texts (handlers/parsing.py's message) for a longer list. Stands in for the session."""

    def __init__(self, limit: int):
        self.limit, self.sizes, self.bodies = limit, [], []

    def answer(self, body: dict) -> tuple[int, dict | list]:
        field = "texts" if "texts" in body else "instances"
        items = body[field]
        self.sizes.append(len(items))
        self.bodies.append(body)
        if len(items) > self.limit:
            return 413, {"error": f"'{field}' has {len(items)} entries; at most {self.limit} per request",
                         "type": "too_many_texts"}
        answers = [{"label": text} for text in items]
        return 200, answers if field == "texts" else {"predictions": answers}

    def request(self, method, url, headers=None, timeout=None, **kwargs):
        # The KServe route is sent with json=, /predictions with data= (bytes).
        status, body = self.answer(kwargs["json"] if "json" in kwargs else json.loads(kwargs["data"]))
        return response(status, body if isinstance(body, dict) else json.dumps(body))


TEXTS = [f"text {i}" for i in range(100)]


def test_a_long_list_goes_in_requests_of_the_handlers_default_limit(key_file):
    handler = FakeHandler(limit=64)
    c = TorchServeClient(INF, MGMT, key_file, session=handler)
    assert c.max_texts == 64  # handlers/config.py's max_texts_per_request
    assert c.predict("clf", texts=TEXTS, top_k=1) == [{"label": t} for t in TEXTS]
    assert handler.sizes == [64, 36] and all(b["top_k"] == 1 for b in handler.bodies)


def test_a_smaller_limit_is_learned_from_the_413_and_kept(key_file, sleeps, caplog):
    handler = FakeHandler(limit=30)
    c = TorchServeClient(INF, MGMT, key_file, session=handler)
    with caplog.at_level("INFO", logger="textclf.torchserve.rest"):
        assert c.predict("clf", texts=TEXTS) == [{"label": t} for t in TEXTS]
    assert handler.sizes == [64, 30, 30, 30, 10] and c.max_texts == 30 and sleeps == []
    assert "the server takes at most 30 texts per request" in caplog.text
    c.predict("clf", texts=TEXTS[:40])
    assert handler.sizes[5:] == [30, 10]  # no second refusal


def test_instances_are_split_and_joined_as_predictions(key_file):
    handler = FakeHandler(limit=64)
    c = TorchServeClient(INF, MGMT, key_file, session=handler, max_texts=40)
    assert c.predict("clf", instances=TEXTS) == {"predictions": [{"label": t} for t in TEXTS]}
    assert handler.sizes == [40, 40, 20]


def test_a_413_that_states_no_smaller_limit_is_raised(key_file):
    session = FakeSession((413, {"error": "'texts' has 3 entries; at most 5 per request", "type": "too_many_texts"}))
    with pytest.raises(TorchServeError, match="at most 5 per request"):
        client(session, key_file).predict("clf", texts=["a", "b", "c"])
    assert len(session.sent) == 1


def test_an_empty_list_is_still_sent_for_the_server_to_refuse(key_file):
    session = FakeSession((400, {"error": "'texts' is empty", "type": "invalid_request"}))
    with pytest.raises(TorchServeError, match="'texts' is empty"):
        client(session, key_file).predict("clf", texts=[])
    assert session.sent[0].body == b'{"texts": []}'


def test_max_texts_must_be_positive(key_file):
    with pytest.raises(ValueError, match="max_texts"):
        TorchServeClient(INF, MGMT, key_file, max_texts=0)


# ---- a server that is not running (a closed loopback port) --------------------------------------------------
@pytest.fixture
def closed_port() -> int:
    (port,) = free_ports(1)  # bound to 127.0.0.1:0 and closed again: nothing listens there
    return port


def test_real_session_to_a_closed_port_is_unreachable(tmp_path, closed_port, sleeps):
    url = f"http://127.0.0.1:{closed_port}"
    c = TorchServeClient(url, url, tmp_path / "absent.json", retries=2, backoff_s=0.01)
    with pytest.raises(ServerUnreachable, match=f"^cannot reach TorchServe at {url} "):
        c.predict("clf", "hi")
    assert sleeps == [0.01, 0.02]
    with pytest.raises(ServerUnreachable):
        c.health()
    assert sleeps == [0.01, 0.02]  # health was not retried


def test_entry_point_prints_one_line_when_the_server_is_down(tmp_path, closed_port, capsys):
    @dataclasses.dataclass
    class Nothing:
        """A verb without options."""

    url = f"http://127.0.0.1:{closed_port}"
    c = TorchServeClient(url, url, tmp_path / "absent.json")
    assert run(lambda _: c.health(), Nothing, argv=[]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: cannot reach TorchServe at {url} (ConnectionError): is it running? "
                   "(start it with `textclf serve`)\n")


# ---- gRPC: the same errors and retries ----------------------------------------------------------------------
def _stub(service: str, *methods: str):
    """A stand-in for a generated *ServiceStub: raw unary methods on the channel (the requests are dicts)."""
    def make(channel):
        return SimpleNamespace(**{m: channel.unary_unary(f"/org.pytorch.serve.grpc.{service}/{m}",
                                                         request_serializer=lambda r: b"",
                                                         response_deserializer=lambda b: b) for m in methods})
    return make


def fake_stubs():
    fields = lambda **f: f  # noqa: E731 - a request message is just its fields here
    return (SimpleNamespace(PredictionsRequest=fields),
            SimpleNamespace(InferenceAPIsServiceStub=_stub("inference.InferenceAPIsService", "Predictions", "Ping")),
            SimpleNamespace(ListModelsRequest=fields),
            SimpleNamespace(ManagementAPIsServiceStub=_stub("management.ManagementAPIsService", "ListModels")))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FakeMethod:
    """A stub method replaying scripted errors (or callables returning them), then answering `reply`."""

    def __init__(self, *script, reply=None):
        self.script, self.reply, self.metadata = list(script), reply, []

    def __call__(self, request, metadata=None, timeout=None):
        self.metadata.append(dict(metadata))
        item = self.script.pop(0) if self.script else self.reply
        item = item() if callable(item) else item
        if isinstance(item, Exception):
            raise item
        return item


@pytest.fixture
def grpc_client(monkeypatch, key_file, closed_port):
    monkeypatch.setattr(grpc_module, "load_stubs", fake_stubs)
    target = f"127.0.0.1:{closed_port}"
    with grpc_module.TorchServeGrpcClient(target, target, key_file, retries=3, backoff_s=0.5) as c:
        yield c


PREDICTED = SimpleNamespace(prediction=json.dumps(ANSWER).encode())


def test_grpc_to_a_closed_port_is_unreachable_after_the_prediction_retries(grpc_client, closed_port, sleeps):
    with pytest.raises(ServerUnreachable) as e:
        grpc_client.predict("clf", "hi")
    assert str(e.value).startswith(f"cannot reach TorchServe at 127.0.0.1:{closed_port} (gRPC UNAVAILABLE): "
                                   "is it running?")
    assert sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("call", [lambda c: c.ping(), lambda c: c.list_models()], ids=["ping", "models"])
def test_grpc_other_calls_to_a_closed_port_fail_at_once(grpc_client, sleeps, call):
    with pytest.raises(ServerUnreachable):
        call(grpc_client)
    assert sleeps == []


def test_grpc_torchserves_own_unavailable_is_retried_and_kept(grpc_client, sleeps):
    no_worker = FakeRpcError(grpc.StatusCode.UNAVAILABLE, 'Model "clf" has no worker to serve inference request.')
    grpc_client.inference = SimpleNamespace(Predictions=FakeMethod(*[no_worker] * 4))
    with pytest.raises(TorchServeError) as e:
        grpc_client.predict("clf", "hi")
    assert not isinstance(e.value, ServerUnreachable)  # the server is up: it said why it could not answer
    assert (e.value.status, e.value.message) == ("UNAVAILABLE", 'Model "clf" has no worker to serve inference request.')
    assert sleeps == [0.5, 1.0, 2.0]


def test_grpc_worker_died_is_retried_then_answered(grpc_client, sleeps):
    died = FakeRpcError(grpc.StatusCode.INTERNAL, "Worker died. org.pytorch.serve.util.InternalServerException")
    grpc_client.inference = SimpleNamespace(Predictions=FakeMethod(died, died, reply=PREDICTED))
    assert grpc_client.predict("clf", "hi") == ANSWER and sleeps == [0.5, 1.0]


def test_grpc_other_errors_are_not_retried(grpc_client, sleeps):
    missing = FakeRpcError(grpc.StatusCode.INTERNAL, "Model not found: clf org.pytorch.serve.ModelNotFoundException")
    grpc_client.inference = SimpleNamespace(Predictions=FakeMethod(missing, reply=PREDICTED))
    with pytest.raises(TorchServeError) as e:
        grpc_client.predict("clf", "hi")
    assert (e.value.status, e.value.kind) == ("NOT_FOUND", "ModelNotFoundException")
    assert e.value.message == "Model not found: clf"
    assert sleeps == []


def test_grpc_sends_each_apis_key_and_recovers_a_rotated_one(grpc_client, key_file):
    denied = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed.")
    predictions = FakeMethod(rotated(key_file, "i2", denied), reply=PREDICTED)
    models = FakeMethod(reply=SimpleNamespace(msg='{"models": []}'))
    grpc_client.inference = SimpleNamespace(Predictions=predictions)
    grpc_client.management = SimpleNamespace(ListModels=models)
    assert grpc_client.predict("clf", "hi") == ANSWER and grpc_client.list_models() == {"models": []}
    assert predictions.metadata == [{"authorization": "Bearer i1"}, {"authorization": "Bearer i2"}]
    assert models.metadata == [{"authorization": "Bearer m1"}]


def test_grpc_wrong_key_is_recovered_once_then_refused_in_one_line(grpc_client, key_file, sleeps):
    denied = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed.")
    predictions = FakeMethod(rotated(key_file, "i2", denied), rotated(key_file, "i3", denied), reply=PREDICTED)
    grpc_client.inference = SimpleNamespace(Predictions=predictions)
    with pytest.raises(TokenRefused) as e:
        grpc_client.predict("clf", "hi")
    assert e.value.status == "PERMISSION_DENIED" and str(key_file) in str(e.value) and sleeps == []
    assert predictions.metadata == [{"authorization": "Bearer i1"}, {"authorization": "Bearer i2"}]


def test_grpc_splits_a_long_list_and_learns_the_limit_like_rest(grpc_client):
    handler = FakeHandler(limit=30)

    def predictions(request, metadata=None, timeout=None):
        status, body = handler.answer(json.loads(request["input"]["data"]))
        # gRPC drops the handler's status: its error body arrives as an answer (TorchServeGrpcClient.predict_raw)
        return SimpleNamespace(prediction=json.dumps(body).encode())

    grpc_client.inference = SimpleNamespace(Predictions=predictions)
    assert grpc_client.predict("clf", texts=TEXTS) == [{"label": t} for t in TEXTS]
    assert handler.sizes == [64, 30, 30, 30, 10] and grpc_client.max_texts == 30
