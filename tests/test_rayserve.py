"""Ray Serve without a cluster: the handler's context adapter, .mar extraction, deployment shapes, routing tables."""
from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from handlers.metrics import ModelMetrics
from textclf.rayserve import container
from textclf.rayserve.app import ingress_config
from textclf.rayserve.context import Call, RayMetrics, ServeContext
from textclf.rayserve.shape import (
    ModelShape,
    RayServeError,
    extract_mar,
    with_default,
    with_version,
    without_version,
)


def fake_mar(path: Path, config: dict | None = None, extra: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "clf", "modelVersion": "1.0"}}))
        z.writestr("model-config.yaml", yaml.safe_dump(config if config is not None else {
            "minWorkers": 1, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 50, "handler": {"cache_size": 0}}))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("body, ctype, expected", [
    (b'{"text": "a"}', "application/json", {"body": {"text": "a"}}),
    (b'{"text": "a"}', "application/json; charset=utf-8", {"body": b'{"text": "a"}'}),  # the worker's exact match
    (b"{oops", "application/json", {"body": b"{oops"}),
    (b"caf\xc3\xa9", "text/plain; charset=utf-8", {"body": "caf\u00e9"}),
    (b"caf\xe9", "text/plain", {"body": b"caf\xe9"}),
    (b"text=a", "application/x-www-form-urlencoded", {}),
    (b"raw", "", {"body": b"raw"}),
])
def test_rows_are_decoded_as_torchserve_workers_decode_them(body, ctype, expected):
    assert Call(body, ctype).row() == expected


class Fake:
    def __init__(self, kind, name, description, tag_keys):
        self.kind, self.name, self.tag_keys, self.values = kind, name, tag_keys, []

    def inc(self, value, tags=None):
        self.values.append((value, tags))

    set = observe = inc


def test_model_metrics_reach_ray_metrics_with_their_dimensions():
    made = []
    metrics = RayMetrics("clf", "1.0", lambda *a: made.append(Fake(*a)) or made[-1])
    ModelMetrics(metrics, "clf", "1.0").record([("pos", 0.9), ("pos", 0.8)], [(5, False, 0)], 1, ["invalid_text"])
    by_name = {m.name: m for m in made}
    assert by_name["textclf_PredictionsPerLabel"].values == [
        (2, {"ModelName": "clf", "ModelVersion": "1.0", "Level": "Model", "Label": "pos"})]
    assert by_name["textclf_RejectedRequests"].values[0][1]["Reason"] == "invalid_text"
    assert by_name["textclf_CacheEntries"].kind == "gauge"
    metrics.add_time("HandlerTime", 12.5)
    assert by_name.get("textclf_HandlerTime_ms") is None and made[-1].values == [(12.5, {"ModelName": "clf",
                                                                                         "ModelVersion": "1.0"})]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from training.tiny import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("ray-bundle") / "bundle", labels=["negative", "positive"])


def test_the_real_handler_answers_each_request_of_a_batch_with_its_own_status(tiny_bundle):
    from handlers.text_classifier import TextClassifierHandler

    made = []
    context = ServeContext("clf", "1.0", str(tiny_bundle), {"handler": {}}, 8, None,
                           RayMetrics("clf", "1.0", lambda *a: made.append(Fake(*a)) or made[-1]))
    handler = TextClassifierHandler()
    handler.initialize(context)
    calls = [Call(b'{"text": 5}', "application/json"), Call(b"fine", "text/plain"),
             Call(b'{"text": "why"}', "application/json", explain=True)]
    answers = context.answers(handler.handle(context.start_batch(calls), context))
    assert [a.status for a in answers] == [400, 200, 200]
    assert json.loads(answers[0].body) == {"error": "text must be a string, got a number", "type": "invalid_text"}
    assert set(json.loads(answers[1].body)) == {"label", "score", "scores"}
    assert json.loads(answers[2].body) != json.loads(answers[1].body)  # an explanation, not a prediction
    assert any(m.name == "textclf_HandlerTime_ms" for m in made)


def test_mar_is_extracted_once_atomically_and_cached(tmp_path):
    mar = fake_mar(tmp_path / "clf-1.0.mar", extra={"labels.json": "[]"})
    cache, results = tmp_path / "cache", []
    threads = [threading.Thread(target=lambda: results.append(extract_mar(mar, cache))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and (results[0] / "labels.json").is_file()
    assert [p.name for p in cache.iterdir()] == [results[0].name]  # no half-written or leftover copy
    assert len(results[0].name) == 64


def test_mar_escaping_its_directory_is_refused(tmp_path):
    mar = fake_mar(tmp_path / "evil.mar", extra={"../escape.txt": "x"})
    with pytest.raises(RayServeError, match="outside"):
        extract_mar(mar, tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "cache").iterdir()) == []


def test_shape_defaults_come_from_the_archive(tmp_path):
    shape = ModelShape.from_args({"source": str(fake_mar(tmp_path / "clf-1.0.mar"))})
    assert (shape.name, shape.version, shape.replicas, shape.batch_size, shape.batch_delay_ms) == ("clf", "1.0", 1, 8, 50)
    assert shape.model_yaml["handler"] == {"cache_size": 0} and shape.threads(8) == 4  # 8 cores // maxWorkers 2
    options = shape.deployment_options()
    assert options["num_replicas"] == 1 and options["max_ongoing_requests"] == 16
    assert shape.scale_override() == {"name": "model", "num_replicas": 1}


def test_shape_arguments_override_the_archive(tmp_path):
    mar = str(fake_mar(tmp_path / "clf-1.0.mar"))
    shape = ModelShape.from_args({"source": mar, "name": "other", "version": "3", "min_replicas": 1, "max_replicas": 4,
                                  "batch_size": 2, "batch_delay_ms": 0, "handler": {"default_top_k": 1}})
    assert shape.replicas is None and shape.threads(8) == 2  # split between the 4 replicas it may run
    assert shape.model_yaml["handler"] == {"cache_size": 0, "default_top_k": 1}
    auto = shape.scale_override()
    assert auto["num_replicas"] == "auto" and auto["autoscaling_config"]["max_replicas"] == 4
    assert ModelShape.from_args({"source": mar, "threads": 3}).threads(64) == 3
    assert ModelShape.from_dict(shape.to_dict()) == shape


@pytest.mark.parametrize("args, says", [
    ({"replicas": 2, "max_replicas": 3}, "not both"),
    ({"min_replicas": 3, "max_replicas": 2}, "more than max_replicas"),
    ({"replicas": 0}, "replicas must be a whole number >= 1"),
    ({"workers": 2}, "unknown model_app argument"),
    ({"handler": {"max_texts_per_request": 0}}, "max_texts_per_request"),
    ({"name": "bad/name"}, "name 'bad/name'"),
    ({"batch_delay_ms": -1}, "batch_delay_ms"),
])
def test_shape_mistakes_are_one_line_errors(tmp_path, args, says):
    with pytest.raises(RayServeError, match=None) as e:
        ModelShape.from_args({"source": str(fake_mar(tmp_path / "clf-1.0.mar")), **args})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_shape_refuses_a_missing_or_broken_source(tmp_path):
    with pytest.raises(RayServeError, match="neither a bundle directory nor a .mar"):
        ModelShape.from_args({"source": str(tmp_path / "nothing")})
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    with pytest.raises(RayServeError, match="not a readable zip archive"):
        ModelShape.from_args({"source": str(tmp_path / "broken.mar")})


def test_routing_table():
    models = with_version({}, "clf", "1.0")
    assert models == {"clf": {"default": "1.0", "versions": ["1.0"]}}
    models = with_version(models, "clf", "2.0")
    assert models["clf"]["default"] == "1.0"  # the first version stays the default
    models = with_default(models, "clf", "2.0")
    with pytest.raises(RayServeError, match="is the default version"):
        without_version(models, "clf", "2.0")
    assert without_version(models, "clf", "1.0") == {"clf": {"default": "2.0", "versions": ["2.0"]}}
    with pytest.raises(RayServeError, match="not deployed"):
        with_default(models, "clf", "9")
    assert without_version({"clf": {"default": "1", "versions": ["1"]}}, "clf", "1") == {}


@pytest.mark.parametrize("args, says", [
    ({"models": {"clf": {"default": "3", "versions": ["1"]}}}, "default version '3' is not one of"),
    ({"models": {"clf": {"versions": []}}}, "non-empty list"),
    ({"max_request_size": 0}, "max_request_size"),
    ({"routes": {}}, "unknown ingress_app argument"),
])
def test_ingress_config_mistakes(args, says):
    with pytest.raises(RayServeError) as e:
        ingress_config(args)
    assert says in str(e.value)


def test_ingress_config_defaults():
    assert ingress_config(None) == {"models": {}, "key_file": None, "max_request_size": 10485760}


@pytest.mark.parametrize("env, says", [
    ({"TOKEN_AUTH": "maybe"}, "must be on or off"),
    ({"TOKEN_AUTH": "off"}, "needs a loopback BIND_ADDRESS"),
    ({"INFERENCE_PORT": "0"}, "INFERENCE_PORT='0'"),
    ({"MODEL_STORE": "/nonexistent"}, "no model archive"),
])
def test_container_settings_mistakes(tmp_path, env, says):
    fake_mar(tmp_path / "clf-1.0.mar")
    with pytest.raises(Exception) as e:
        container.settings({"MODEL_STORE": str(tmp_path), **env})
    assert says in str(e.value) and getattr(e.value, "exit_code", None) == 2


def test_container_settings_in_file_name_order(tmp_path):
    for name in ("clf-2.0.mar", "clf-1.0.mar"):
        fake_mar(tmp_path / name)
    s = container.settings({"MODEL_STORE": str(tmp_path), "TOKEN_AUTH": "off", "BIND_ADDRESS": "127.0.0.1"})
    assert [a.name for a in s.archives] == ["clf-1.0.mar", "clf-2.0.mar"] and s.port == 8080 and not s.token_auth
