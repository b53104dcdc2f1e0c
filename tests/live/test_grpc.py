"""The same model over gRPC, with the token passed as `authorization: Bearer <key>` metadata."""
import pytest

from tests.live.conftest import NAME, V1_LABELS
from tests.live.test_rest import assert_prediction
from textclf.torchserve.errors import TokenRefused, TorchServeError

pytestmark = pytest.mark.live


def test_ping(live):
    assert live.grpc.ping() == {"status": "Healthy"}


def test_predict_forms_match_rest(live):
    text = "the battery lasts forever"
    one = live.grpc.predict(NAME, text)
    assert_prediction(one)
    assert one["scores"] == pytest.approx(live.rest.predict(NAME, text)["scores"], abs=1e-4)
    many = live.grpc.predict(NAME, texts=[text, "why was my payment declined"], version="1.0")
    assert len(many) == 2 and all(set(p["scores"]) == V1_LABELS for p in many)
    kserve = live.grpc.predict(NAME, instances=[text])
    assert_prediction(kserve["predictions"][0])


def test_handler_error_is_raised(live):
    # TorchServe's unary gRPC reports OK for a request the handler refused; the client raises it.
    with pytest.raises(TorchServeError) as e:
        live.grpc.predict_raw(NAME, b'{"text": 1}')
    assert e.value.status == "INVALID_ARGUMENT" and "must be a string" in e.value.message


def test_describe_over_grpc(live):
    (described,) = live.grpc.describe(NAME, "1.0")
    assert described["modelName"] == NAME and described["batchSize"] == 8


def test_unknown_model_is_not_found(live):
    with pytest.raises(TorchServeError) as e:
        live.grpc.describe(NAME + "-missing")
    assert e.value.status == "NOT_FOUND" and e.value.kind == "ModelNotFoundException"


def test_wrong_token_is_refused_in_one_line(live, tmp_path):
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    bad = tmp_path / "key_file.json"
    bad.write_text('{"management": {"key": "nope"}, "inference": {"key": "nope"}, "API": {"key": "nope"}}')
    with TorchServeGrpcClient(live.endpoints.grpc_inference, live.endpoints.grpc_management, bad) as client:
        with pytest.raises(TokenRefused) as e:
            client.predict(NAME, "hello")
    assert e.value.status == "PERMISSION_DENIED"
    assert str(e.value).startswith("token refused:") and str(bad) in str(e.value) and "\n" not in str(e.value)


def test_refused_stale_key_is_recovered_once(live, monkeypatch):
    from textclf.torchserve.keys import KeyStore, read_keys

    stale = read_keys(live.endpoints.key_file).inference
    KeyStore(live.endpoints.key_file, live.endpoints.management_url).refresh("inference")
    monkeypatch.setattr(live.grpc, "_key", lambda api: stale)
    assert live.grpc.ping() == {"status": "Healthy"}


def test_version_management_over_grpc(live):
    from tests.live.conftest import V2_LABELS

    g = live.grpc
    assert "registered" in g.register(NAME, f"{NAME}-2.0.mar", initial_workers=1, batch_size=4, max_batch_delay=20)
    try:
        g.set_default(NAME, "2.0")
        assert set(g.predict(NAME, "hello")["scores"]) == V2_LABELS
        g.scale(NAME, "2.0", min_workers=2)
        (described,) = g.describe(NAME, "2.0")
        assert (described["minWorkers"], described["maxWorkers"], described["batchSize"]) == (2, 2, 4)
        assert sum(w["status"] == "READY" for w in described["workers"]) == 2
        with pytest.raises(ValueError, match="cannot scale to 0"):
            g.scale(NAME, "2.0", min_workers=0)
    finally:
        g.set_default(NAME, "1.0")
        g.unregister(NAME, "2.0")
    assert [m["modelVersion"] for m in live.rest.describe(NAME, "all")] == ["1.0"]
    assert set(g.predict(NAME, "hello")["scores"]) == V1_LABELS
