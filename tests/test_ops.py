"""tsclient.ops without a server: the archive's plan on register and scale, and `make scale` waiting for READY."""
from __future__ import annotations

import zipfile

import pytest
import yaml

from tsclient import ops
from tsclient.archive import read_plan


class FakeClient:
    """Answers at once; describe reports READY workers one poll later each (as TorchServe can)."""

    def __init__(self, ready_after: list[int], model_url: str = "clf-1.0.mar"):
        self.ready_after, self.model_url, self.calls = list(ready_after), model_url, []

    def register(self, name, url, **params):
        self.calls.append(("register", name, url, params))
        return {"status": f"Model {name} registered"}

    def scale(self, name, version, min_workers, max_workers, synchronous):
        self.calls.append(("scale", name, version, min_workers, max_workers, synchronous))
        return {"status": "Processing worker updates..."}

    def describe(self, name, version=None):
        ready = self.ready_after.pop(0) if len(self.ready_after) > 1 else self.ready_after[0]
        return [{"modelUrl": self.model_url, "workers": [{"status": "READY"}] * ready + [{"status": "UNLOADING"}]}]


def write_mar(store, name="clf", version="1.0", **plan):
    """An archive as far as ops reads it: a manifest and the model-config.yaml with its plan."""
    store.mkdir(exist_ok=True)
    path = store / f"{name}-{version}.mar"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", "{}")
        z.writestr("model-config.yaml", yaml.safe_dump(plan))
    return path


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def target_with(client, store):
    target = ops.Target()
    target.client = lambda: client
    target.model_store = lambda: store
    return target


PLAN = {"minWorkers": 1, "maxWorkers": 2, "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 90}


def test_read_plan(store):
    plan = read_plan(write_mar(store, **PLAN))
    assert (plan.min_workers, plan.max_workers, plan.batch_size, plan.max_batch_delay, plan.response_timeout) == (
        1, 2, 16, 5, 90)


def test_register_starts_the_archives_min_workers_with_its_batching(store):
    write_mar(store, **PLAN)
    client = FakeClient([1])
    ops._register(ops.RegisterConfig("clf", "1.0", target=target_with(client, store)))
    assert client.calls == [("register", "clf", "clf-1.0.mar", {
        "initial_workers": 1, "batch_size": 16, "max_batch_delay": 5, "response_timeout": 90, "synchronous": True})]


def test_register_workers_scales_to_that_many(store):
    """`make register WORKERS=2` once registered the archive's minWorkers (1): TorchServe's minWorkers wins over
    initial_workers. It now scales to the count asked for and waits for it."""
    write_mar(store, **PLAN)
    client = FakeClient([1, 2])
    ops._register(ops.RegisterConfig("clf", "1.0", workers=2, target=target_with(client, store)))
    assert [c[0] for c in client.calls] == ["register", "scale"]
    assert client.calls[0][3]["initial_workers"] == 2 and client.calls[1] == ("scale", "clf", "1.0", 2, 2, True)


@pytest.mark.parametrize("make_config", [
    lambda target: ops.RegisterConfig("clf", "1.0", workers=3, target=target),
    lambda target: ops.ScaleConfig("clf", 3, "1.0", target=target),
])
def test_more_workers_than_planned_are_refused_before_asking_the_server(store, make_config):
    write_mar(store, **PLAN)
    client = FakeClient([1])
    with pytest.raises(ops.OpsError, match=r"clf-1\.0\.mar plans at most 2 worker\(s\).*--max-workers 3"):
        ops.main(make_config(target_with(client, store)))
    assert [c[0] for c in client.calls] == []


def test_a_corrupt_archive_is_named_before_registration(store):
    store.mkdir()
    (store / "clf-1.0.mar").write_bytes(b"PK\x03\x04 truncated")
    client = FakeClient([1])
    with pytest.raises(ops.OpsError, match="not a readable zip archive"):
        ops._register(ops.RegisterConfig("clf", "1.0", target=target_with(client, store)))
    assert client.calls == []


def test_scale_returns_once_every_worker_asked_for_is_ready(store):
    write_mar(store, **PLAN)
    client = FakeClient([1, 1, 1, 2])
    assert ops._scale(ops.ScaleConfig("clf", 2, "1.0", target=target_with(client, store))) == {
        "status": "Processing worker updates..."}
    assert client.calls == [("scale", "clf", "1.0", 2, 2, True)] and client.ready_after == [2]


def test_scale_names_the_workers_that_never_became_ready(store):
    write_mar(store, **PLAN)
    with pytest.raises(ops.OpsError, match=r"clf: 1 of 2 workers READY after 0 s; see logs/model_log.log"):
        ops._scale(ops.ScaleConfig("clf", 2, "1.0", target=target_with(FakeClient([1]), store)), ready_timeout_s=0.2)


def test_locked_mode_refusal_says_so():
    from tsclient.rest import TorchServeError

    class Locked(FakeClient):
        def set_default(self, name, version):
            raise TorchServeError(405, "Requested method is not allowed, please refer to API document.",
                                  "MethodNotAllowedException")

    target = ops.Target()
    target.client = lambda: Locked([1])
    with pytest.raises(TorchServeError) as e:
        ops.main(ops.SetDefaultConfig("clf", "1.0", target=target))
    assert (e.value.status, e.value.kind) == (405, "MethodNotAllowedException") and "locked mode" in str(e.value)


def test_cli_help_and_mistakes(capsys):
    with pytest.raises(SystemExit) as info:
        ops.cli(["register", "--help"])
    assert info.value.code == 0 and "--workers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        ops.cli(["scale", "--name", "clf", "--workers", "-1"])
    assert info.value.code == 2 and capsys.readouterr().err.strip() == "error: --workers must be an integer >= 0, got -1"


def test_server_errors_are_one_line_exit_1(tmp_path, capsys):
    """`make serve` refusing to start (here: a config without a model store) says why on one line."""
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:1\n")
    assert ops.cli(["serve", "--config", str(config), "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no model_store property" in err
