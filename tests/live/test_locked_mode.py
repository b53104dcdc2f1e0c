"""Locked mode (config.locked.properties): the model API is off and the models are loaded at start; plus
`make stop` with requests flowing and `make serve` right after it, on a short-lived server of its own.

The server is started with TS_DISABLE_TOKEN_AUTHORIZATION and TS_ENABLE_MODEL_API set in its environment:
neither may weaken it (TorchServe reads TS_* variables only with enable_envvars_config=true)."""
from __future__ import annotations

import json
import os

import pytest
import requests

from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from tests.live.test_server import our_processes
from tests.live.traffic import Traffic
from textclf.core import paths
from textclf.torchserve import ops, properties, server
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.ports import free_port_overrides, port_in_use
from textclf.torchserve.rest import TorchServeClient

pytestmark = pytest.mark.live
LOCKED = paths.LOCKED_CONFIG
HOSTILE_ENV = {"TS_DISABLE_TOKEN_AUTHORIZATION": "true", "TS_ENABLE_MODEL_API": "true"}


@pytest.fixture(scope="module")
def locked(tmp_path_factory, model_store, live):  # `live` first: the two servers never start together
    cfg = properties.ServerConfig(config=LOCKED, state_dir=tmp_path_factory.mktemp("ts-locked"), model_store=model_store,
                              ports=free_port_overrides(),
                              properties={"load_models": f"{NAME}-1.0.mar,{NAME}-2.0.mar"})
    saved = {k: os.environ.get(k) for k in HOSTILE_ENV}
    os.environ.update(HOSTILE_ENV)
    try:
        ep = server.start(cfg)  # returns once every loaded version has its workers READY
        yield cfg, ep, TorchServeClient(ep.inference_url, ep.management_url, ep.key_file, backoff_s=0.1)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop(cfg)


def test_locked_config_is_the_managed_one_with_the_model_api_off():
    managed, locked = properties.read_properties(paths.SERVER_CONFIG), properties.read_properties(LOCKED)
    changed = {k for k in managed.keys() | locked.keys() if managed.get(k) != locked.get(k)}
    assert changed == {"enable_model_api", "load_models"}
    assert locked["enable_model_api"] == "false" and locked["load_models"] == "classifier-1.0.mar"


def test_serves_the_models_it_loaded_at_start(locked):
    _, _, client = locked
    described = {d["modelVersion"]: d for d in client.describe(NAME, "all")}
    assert set(described) == {"1.0", "2.0"}
    for d in described.values():
        assert d["loadedAtStartup"] and [w["status"] for w in d["workers"]] == ["READY"]
    assert set(client.predict(NAME, "hello")["scores"]) == V1_LABELS  # the first listed is the default
    assert set(client.predict(NAME, "hello", version="2.0")["scores"]) == V2_LABELS


def test_registration_and_unregistration_are_refused(locked, tmp_path):
    cfg, ep, client = locked
    (tmp_path / "MAR-INF").mkdir()  # an absolute directory path: managed mode would register it
    for call in (lambda: client.register("other", f"{NAME}-1.0.mar"), lambda: client.register("other", str(tmp_path)),
                 lambda: client.unregister(NAME, "2.0"),
                 lambda: ops.main(ops.RegisterConfig(NAME, "2.0", target=ops.Target(LOCKED, cfg.state_dir)))):
        with pytest.raises(TorchServeError) as e:
            call()
        assert (e.value.status, e.value.kind) == (405, "MethodNotAllowedException")
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    with TorchServeGrpcClient(ep.grpc_inference, ep.grpc_management, ep.key_file) as grpc:
        for call in (lambda: grpc.register("other", f"{NAME}-1.0.mar"), lambda: grpc.unregister(NAME, "2.0")):
            with pytest.raises(TorchServeError) as e:
                call()
            assert e.value.status == "PERMISSION_DENIED" and "Model API disabled" in e.value.message
    assert [m["modelName"] for m in client.list_models()] == [NAME]
    assert {d["modelVersion"] for d in client.describe(NAME, "all")} == {"1.0", "2.0"}


def test_environment_cannot_turn_tokens_off(locked):
    _, ep, _ = locked
    r = requests.post(f"{ep.inference_url}/predictions/{NAME}", data=b"hello", headers={"Content-Type": "text/plain"},
                      timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"


def test_archive_missing_from_the_store_fails_before_start(tmp_path, model_store):
    cfg = properties.ServerConfig(config=LOCKED, state_dir=tmp_path, model_store=model_store,
                              ports=free_port_overrides(),
                              properties={"load_models": f"{NAME}-1.0.mar,{NAME}-7.7.mar"})
    with pytest.raises(properties.ServerError, match=rf"load_models lists {NAME}-7\.7\.mar, not in the model store"):
        server.start(cfg)
    assert our_processes(tmp_path) == []


def test_archive_that_cannot_load_fails_the_start_with_its_reason(tmp_path, model_store):
    """TorchServe alone would keep retrying the broken worker; start() stops it and says why."""
    from tests.live.test_faults import rewrite_mar, tamper_model

    store = tmp_path / "store"
    store.mkdir()
    rewrite_mar(model_store / f"{NAME}-1.0.mar", store / f"{NAME}-9.2.mar", "9.2", tamper_model)
    cfg = properties.ServerConfig(config=LOCKED, state_dir=tmp_path / "state", model_store=store,
                              ports=free_port_overrides(),
                              properties={"load_models": f"{NAME}-9.2.mar"})
    with pytest.raises(properties.ServerError, match="cannot be loaded; its worker failed with: .*BundleError: .*"
                                                 "does not match the model card's"):
        server.start(cfg)
    assert our_processes(cfg.state_dir) == [] and server.running_pid(cfg) is None


def test_stop_while_requests_flow_then_serve_again(locked):
    """Last in this module: it stops the locked server. Requests sent during the stop are answered or fail
    with a connection error after their retries; nothing hangs and nothing is left behind. The next start,
    in the same state dir, needs no clean-up; it also shows the documented way to turn tokens off."""
    cfg, ep, _ = locked
    with Traffic(ep, NAME, retries=1, backoff_s=0.05) as traffic:
        traffic.wait_for_answers(20)
        answered = len(traffic.labels)
        assert ops.main(ops.StopConfig(ops.Target(LOCKED, cfg.state_dir))) == {"status": "TorchServe stopped"}
    # The JVM deletes key_file.json first and answers a little longer, so a request sent then is refused
    # for its missing key; every other one is answered or cannot connect.
    stopped = ("cannot reach TorchServe", "UNAVAILABLE", "Worker died", "TorchServe 503", "token refused")
    assert answered >= 20 and all(any(s in error for s in stopped) for error in traffic.errors), traffic.errors[:5]
    assert our_processes(cfg.state_dir) == [] and not ep.key_file.exists()
    assert not any(port_in_use(port) for port in ep.ports().values())

    again = properties.ServerConfig(config=LOCKED, state_dir=cfg.state_dir, model_store=cfg.model_store, ports=cfg.ports,
                                properties={"load_models": f"{NAME}-2.0.mar", "disable_token_authorization": "true"})
    try:
        ep = server.start(again)
        r = requests.post(f"{ep.inference_url}/predictions/{NAME}", data=json.dumps({"text": "hi"}), timeout=60,
                          headers={"Content-Type": "application/json"})  # no token: authorization is off
        assert r.status_code == 200 and set(r.json()["scores"]) == V2_LABELS
    finally:
        assert server.stop(again) is True
    assert our_processes(cfg.state_dir) == []
