"""textclf.torchserve.archive: .mar contents, refusal to overwrite, nothing left behind by a failed build, and the
archive loading in a clean interpreter the way a TorchServe worker loads it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from handlers.bundle import BundleError
from handlers.config import HandlerConfigError
from textclf.core.errors import UserError
from textclf.torchserve import archive
from textclf.torchserve.archive import ArchiveConfig, ArchiveError, ArchiverFailed, build_archive, command
from training.tiny import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "export", labels=("negative", "neutral", "positive"))


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def store_entries(store):
    """Everything in the store, hidden temp dirs included."""
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def test_archive_contents(bundle, store):
    path = build_archive(ArchiveConfig(bundle=bundle, name="sentiment", version="2.1", store=store, batch_size=8,
                                       max_batch_delay=20, min_workers=2, max_workers=3, response_timeout=60,
                                       handler={"default_top_k": 2, "max_texts_per_request": 10}))
    assert path == store / "sentiment-2.1.mar" and store_entries(store) == ["sentiment-2.1.mar"]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        model_config = yaml.safe_load(z.read("model-config.yaml"))
        assert z.read("model.pt") == (bundle / "model.pt").read_bytes()
    assert {"text_classifier.py", "handlers/__init__.py", "handlers/text_classifier.py", "handlers/tokenization.py",
            "handlers/bundle.py", "handlers/config.py", "handlers/parsing.py", "model.pt", "model_card.json",
            "config.json", "index_to_name.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
    assert manifest["model"] == {"modelName": "sentiment", "serializedFile": "model.pt", "handler": "text_classifier.py",
                                 "modelVersion": "2.1", "configFile": "model-config.yaml"}
    assert {k: model_config[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout")} \
        == {"batchSize": 8, "maxBatchDelay": 20, "minWorkers": 2, "maxWorkers": 3, "responseTimeout": 60}
    assert model_config["handler"] == {"default_top_k": 2, "max_texts_per_request": 10}
    # TorchServe places the workers on a GPU only with deviceType gpu: the archive asks for it where CUDA is.
    assert model_config.get("deviceType") == ("gpu" if torch.cuda.is_available() else None)


@pytest.mark.parametrize("cuda, device_type", [(True, "gpu"), (False, None)])
def test_device_type_gpu_exactly_where_cuda_is(bundle, store, monkeypatch, cuda, device_type):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = ArchiveConfig(bundle=bundle, name="m", version="1", store=store)
    assert archive.model_config(config).get("deviceType") == device_type


def test_refuses_to_overwrite_unless_forced(bundle, store):
    first = build_archive(ArchiveConfig(bundle=bundle, name="m", version="1", store=store))
    before = first.read_bytes()
    with pytest.raises(ArchiveError, match="already exists; pass --force"):
        build_archive(ArchiveConfig(bundle=bundle, name="m", version="1", store=store, batch_size=4))
    assert first.read_bytes() == before
    build_archive(ArchiveConfig(bundle=bundle, name="m", version="1", store=store, batch_size=4, force=True))
    with zipfile.ZipFile(first) as z:
        assert yaml.safe_load(z.read("model-config.yaml"))["batchSize"] == 4
    assert store_entries(store) == ["m-1.mar"]


def test_invalid_bundle_is_refused_before_building(bundle, tmp_path, store):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "model.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(BundleError, match="does not match the model card"):
        build_archive(ArchiveConfig(bundle=broken, name="m", version="1", store=store))
    (broken / "tokenizer.json").unlink()
    shutil.copy2(bundle / "model.pt", broken / "model.pt")
    with pytest.raises(BundleError, match="tokenizer vocabulary"):
        ArchiveConfig(bundle=broken, name="m", version="1", store=store)
    assert store_entries(store) == []


@pytest.mark.parametrize("script, match", [
    # Writes a partial archive where the real one would go, then fails.
    ("import sys; a = sys.argv; d = a[a.index('--export-path') + 1]; open(d + '/m.mar', 'wb').write(b'PK');"
     "print('disk full, probably'); sys.exit(3)", r"exit 3, archive written\):\ndisk full, probably"),
    # Claims success without writing anything.
    ("import sys; sys.stderr.write('nothing to do')", r"exit 0, archive missing\):\nnothing to do"),
])
def test_failed_archiver_leaves_nothing(bundle, store, monkeypatch, script, match):
    monkeypatch.setattr(archive, "ARCHIVER", [sys.executable, "-c", script])
    with pytest.raises(ArchiverFailed, match=match):
        build_archive(ArchiveConfig(bundle=bundle, name="m", version="1", store=store))
    assert store_entries(store) == []


@pytest.mark.parametrize("changes, error, match", [
    ({"name": "my model"}, ArchiveError, "name 'my model' must start with a letter or digit"),
    ({"version": "../1"}, ArchiveError, "version '../1'"),
    ({"batch_size": 0}, UserError, "--batch-size must be an integer >= 1"),
    ({"min_workers": 2, "max_workers": 1}, UserError, "--max-workers must be an integer >= 2"),
    ({"bundle": "/nonexistent/export"}, ArchiveError, "bundle directory not found"),
    ({"handler": {"thread": 2}}, HandlerConfigError, r"unknown handler option\(s\) \['thread'\]"),
    ({"handler": {"max_length": 65}}, HandlerConfigError, "exceeds the bundle's max_length=64"),
])
def test_config_validation(bundle, store, changes, error, match):
    with pytest.raises(error, match=match):
        ArchiveConfig(**{"bundle": bundle, "name": "m", "version": "1", "store": store, **changes})


def test_cli(bundle, store, capsys):
    args = ["--bundle", str(bundle), "--name", "cli", "--version", "0.1", "--store", str(store)]
    assert command([*args, "--threads", "2", "--chunk-size", "8", "--profile"]) == 0
    with zipfile.ZipFile(store / "cli-0.1.mar") as z:
        assert yaml.safe_load(z.read("model-config.yaml"))["handler"] == {"threads": 2, "chunk_size": 8, "profile": True}
    assert command([*args, "--version", "0.2", "--chunk-size", "auto"]) == 0
    with zipfile.ZipFile(store / "cli-0.2.mar") as z:
        assert yaml.safe_load(z.read("model-config.yaml"))["handler"] == {}  # auto is the handler's default
    assert command([*args, "--version", "0.3", "--chunk-size", "none"]) == 0
    with zipfile.ZipFile(store / "cli-0.3.mar") as z:
        assert yaml.safe_load(z.read("model-config.yaml"))["handler"] == {"chunk_size": None}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        command([*args, "--version", "0.4", "--chunk-size", "eight"])
    assert "--chunk-size: chunk size must be a positive integer, 'auto' or 'none'" in capsys.readouterr().err
    assert command(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        command([*args, "--force", "--threads", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: handler option 'threads' must be an integer >= 1 or null, got 0\n"


LOAD_LIKE_A_WORKER = r"""
import json, os, sys
from ts.context import RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.service import Service
import ts

metrics = MetricsCacheYamlImpl(os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
metrics.initialize_cache()
service = TsModelLoader().load("sentiment", os.getcwd(), "text_classifier.py", None, 16, metrics_cache=metrics)
import handlers
assert os.path.dirname(handlers.__file__) == os.path.join(os.getcwd(), "handlers"), handlers.__file__
batch = [
    {"requestId": b"r0", "headers": [], "parameters": [{"name": "body", "contentType": "text/plain", "value": "hi there"}]},
    {"requestId": b"r1", "headers": [], "parameters": [{"name": "body", "contentType": "application/json",
                                                        "value": {"texts": ["a", "b", "c"]}}]},
    {"requestId": b"r2", "headers": [], "parameters": [{"name": "body", "contentType": "application/json",
                                                        "value": b"{not json"}]},
]
headers, inputs, _ = Service.retrieve_data_for_inference(batch)
service.context.request_processor = headers
out = service._entry_point(inputs, service.context)
print(json.dumps([[service.context.get_response_status(i)[0], json.loads(o)] for i, o in enumerate(out)]))
"""


def test_archive_loads_like_a_torchserve_worker(bundle, store, tmp_path):
    """Extracted into a bare dir and loaded by TorchServe's own model loader, without the repo on sys.path."""
    path = build_archive(ArchiveConfig(bundle=bundle, name="sentiment", version="1", store=store,
                                       handler={"default_top_k": 2, "max_texts_per_request": 2}))
    model_dir = tmp_path / "extracted"
    zipfile.ZipFile(path).extractall(model_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", LOAD_LIKE_A_WORKER], cwd=model_dir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    [(s0, one), (s1, too_many), (s2, bad_json)] = json.loads(result.stdout.strip().splitlines()[-1])
    assert s0 == 200 and len(one["scores"]) == 2  # default_top_k from the archive's model-config.yaml
    assert (s1, too_many) == (413, {"error": "'texts' has 3 entries; at most 2 per request", "type": "too_many_texts"})
    assert s2 == 400 and bad_json["error"].startswith("body is not valid JSON")


def test_review_section_only_when_capture_is_on(bundle, store, capsys):
    args = ["--bundle", str(bundle), "--name", "rev", "--store", str(store)]
    assert command([*args, "--version", "1"]) == 0
    with zipfile.ZipFile(store / "rev-1.mar") as z:
        assert "review" not in yaml.safe_load(z.read("model-config.yaml"))
    assert command([*args, "--version", "2", "--review", "--review-below", "0.5"]) == 0
    with zipfile.ZipFile(store / "rev-2.mar") as z:
        review = yaml.safe_load(z.read("model-config.yaml"))["review"]
    assert review["review"] is True and review["review_below"] == 0.5
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        command([*args, "--version", "3", "--review", "--review-sample", "2"])
    assert e.value.code == 2 and "review_sample' must be a number from 0 to 1" in capsys.readouterr().err
