"""Ray Serve against TorchServe on the same archives (tests/live/conftest.py's model_store): the same answers, the
same refusals, the same token; a replica killed under load and a version switched under load lose no request.

One Ray head for the session (textclf.rayserve.ops), always stopped at the end with every process of its tree.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from tests.live.test_bad_input import BAD
from tests.live.test_rest import assert_prediction
from textclf.rayserve import ops
from textclf.rayserve.shape import CACHE_ENV
from textclf.torchserve.keys import bearer, read_keys
from textclf.torchserve.ports import free_ports
from textclf.torchserve.rest import TorchServeClient

pytestmark = pytest.mark.live
TEXTS = ["the film was a delight", "terrible service, I want a refund now", "ok", "caf\u00e9 \U0001F600"]


@dataclass
class RayLive:
    state_dir: Path
    url: str
    key_file: Path

    def client(self, **kwargs) -> TorchServeClient:
        return TorchServeClient(self.url, self.url, self.key_file, **kwargs)  # TorchServe's client, unchanged

    def headers(self, content_type: str | None = None) -> dict:
        return dict(bearer(read_keys(self.key_file).inference), **({"Content-Type": content_type} if content_type else {}))


@pytest.fixture(scope="session")
def ray_serve(model_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("ray-serve")
    old_cache = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(base / "bundles")  # the head inherits it, so do its replicas
    state = None
    try:
        state = ops.start_head(base / "state", "127.0.0.1", free_ports(1)[0], True, 180)
        ops.deploy(base / "state", {"source": str(model_store / f"{NAME}-1.0.mar")}, timeout_s=300)
        yield RayLive(base / "state", state["url"], Path(state["key_file"]))
    finally:
        ops.stop_head(base / "state")
        if old_cache is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old_cache
        if state is not None:
            left = ops.head_processes(state)
            assert not left, f"Ray processes left running: {[p.pid for p in left]}"


def replica_processes(state_dir: Path, app: str) -> list[psutil.Process]:
    state = json.loads((state_dir / ops.STATE_FILE).read_text())
    return [p for p in ops.head_processes(state) if p.name().startswith(f"ray::ServeReplica:{app}:")
            or " ".join(p.cmdline()).startswith(f"ray::ServeReplica:{app}:")]


def replica_pid(state_dir: Path, app: str) -> int:
    """The process of one replica of `app`, from the replica itself (ModelReplica.pid)."""
    from ray import serve

    with ops.connected(json.loads((state_dir / ops.STATE_FILE).read_text())):
        return serve.get_deployment_handle("model", app).pid.remote().result(timeout_s=60)


def replica_count(state_dir: Path, app: str) -> int:
    from ray import serve

    with ops.connected(json.loads((state_dir / ops.STATE_FILE).read_text())):
        return serve.status().applications[app].deployments["model"].replica_states.get("RUNNING", 0)


class Load:
    """Unversioned predictions from threads through TorchServe's REST client (its own retries allowed)."""

    def __init__(self, ray: RayLive, threads: int = 4):
        self.ray, self.labels, self.errors = ray, [], []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def _run(self):
        client, i = self.ray.client(timeout=120, retries=4, backoff_s=0.1), 0
        while not self._stop.is_set():
            i += 1
            try:
                answer = client.predict(NAME, f"request {i}")
                with self._lock:
                    self.labels.append(frozenset(answer["scores"]))
            except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")

    def wait(self, condition, what: str, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; errors: {self.errors[:3]}"
            time.sleep(0.05)

    def more(self, n: int):
        target = len(self.labels) + n
        self.wait(lambda: len(self.labels) >= target, f"{n} more answers")


def test_same_answers_as_torchserve(live, ray_serve):
    ray = ray_serve.client()
    for text in TEXTS:
        ts, rs = live.rest.predict(NAME, text), ray.predict(NAME, text)
        assert rs["label"] == ts["label"] and rs["scores"] == pytest.approx(ts["scores"], abs=1e-6)
    for ts, rs in zip(live.rest.predict(NAME, texts=TEXTS), ray.predict(NAME, texts=TEXTS), strict=True):
        assert rs["label"] == ts["label"] and rs["scores"] == pytest.approx(ts["scores"], abs=1e-6)
    ts, rs = live.rest.predict(NAME, instances=TEXTS), ray.predict(NAME, instances=TEXTS)
    assert [p["label"] for p in rs["predictions"]] == [p["label"] for p in ts["predictions"]]
    assert_prediction(ray.predict(NAME, "hello", version="1.0"))
    v2 = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}).encode()
    ts_key = bearer(read_keys(live.endpoints.key_file).inference)
    answers = [requests.post(f"{url}/v2/models/{NAME}/infer", data=v2, timeout=60,
                             headers={**h, "Content-Type": "application/json"}).json()
               for url, h in ((live.endpoints.inference_url, ts_key), (ray_serve.url, ray_serve.headers()))]
    assert answers[0] == answers[1] or json.dumps(answers[0], sort_keys=True) == json.dumps(answers[1], sort_keys=True)


def test_bad_input_gets_the_same_status_and_type_on_both(live, ray_serve):
    ts_key = bearer(read_keys(live.endpoints.key_file).inference)
    for case, body, ctype, status, _says, kind in BAD:
        got = [requests.post(f"{url}/predictions/{NAME}", data=body, timeout=60, headers={**h, "Content-Type": ctype})
               for url, h in ((live.endpoints.inference_url, ts_key), (ray_serve.url, ray_serve.headers()))]
        assert [r.status_code for r in got] == [status, status], case
        assert [r.json()["type"] for r in got] == [kind, kind], case
        assert got[0].json() == got[1].json(), case
    for path, kind in ((f"/predictions/{NAME}-missing", "ModelNotFoundException"),
                       (f"/predictions/{NAME}/7.7", "ModelVersionNotFoundException")):
        got = [requests.post(url + path, data=b"hi", headers={**h, "Content-Type": "text/plain"}, timeout=30)
               for url, h in ((live.endpoints.inference_url, ts_key), (ray_serve.url, ray_serve.headers()))]
        assert [(r.status_code, r.json()["type"]) for r in got] == [(404, kind)] * 2
    too_big = b'{"text": "' + b"a" * 10485760 + b'"}'
    r = requests.post(f"{ray_serve.url}/predictions/{NAME}", data=too_big, timeout=60,
                      headers=ray_serve.headers("application/json"))
    assert r.status_code == 413 and r.content == b""


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong-key"}])
def test_missing_or_wrong_token_is_refused_as_torchserve_does(live, ray_serve, headers):
    got = [requests.post(f"{url}/predictions/{NAME}", data="hello", timeout=30,
                         headers={"Content-Type": "text/plain", **headers})
           for url in (live.endpoints.inference_url, ray_serve.url)]
    assert [(r.status_code, r.json()["type"]) for r in got] == [(400, "InvalidKeyException")] * 2
    assert requests.get(f"{ray_serve.url}/ping", headers=headers, timeout=30).status_code == 400


def test_health_readiness_and_docs(ray_serve):
    assert ray_serve.client().health() == {"status": "Healthy"}
    ready = requests.get(f"{ray_serve.url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"status": "Ready"}
    assert requests.get(f"{ray_serve.url}/docs", timeout=30).status_code == 200
    spec = requests.get(f"{ray_serve.url}/openapi.json", timeout=30).json()
    assert "/predictions/{name}" in spec["paths"] and "/v2/models/{name}/infer" in spec["paths"]


def test_killed_replica_loses_no_request(ray_serve):
    ops.main(ops.RayScaleConfig(NAME, "1.0", replicas=2, target=ops.RayTarget(ray_serve.state_dir)))
    try:
        with Load(ray_serve) as load:
            load.more(20)
            victim = replica_pid(ray_serve.state_dir, f"{NAME}-1.0")
            os.kill(victim, signal.SIGKILL)
            load.more(40)
            load.wait(lambda: replica_count(ray_serve.state_dir, f"{NAME}-1.0") == 2, "the replaced replica", 180)
            load.more(20)
        assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
        assert load.errors == []
        assert set(load.labels) == {frozenset(V1_LABELS)}
    finally:
        ops.main(ops.RayScaleConfig(NAME, "1.0", replicas=1, target=ops.RayTarget(ray_serve.state_dir)))


def test_version_switch_under_load_loses_no_request(ray_serve, model_store):
    target = ops.RayTarget(ray_serve.state_dir)
    ingress = replica_processes(ray_serve.state_dir, "textclf")
    ops.deploy(ray_serve.state_dir, {"source": str(model_store / f"{NAME}-2.0.mar")}, timeout_s=300)
    try:
        with Load(ray_serve) as load:
            load.more(10)
            ops.main(ops.RaySetDefaultConfig(NAME, "2.0", target=target))
            switched = len(load.labels)
            load.more(20)
            assert set(load.labels[switched + 4:]) == {frozenset(V2_LABELS)}  # the 4 in flight at the switch may be v1
            ops.main(ops.RaySetDefaultConfig(NAME, "1.0", target=target))
            back = len(load.labels)
            load.more(20)
        assert load.errors == []
        assert set(load.labels[back + 4:]) == {frozenset(V1_LABELS)}
        assert [p.pid for p in replica_processes(ray_serve.state_dir, "textclf")] == [p.pid for p in ingress]
    finally:
        ops.main(ops.RaySetDefaultConfig(NAME, "1.0", target=target))
        ops.main(ops.RayUndeployConfig(NAME, "2.0", target=target))


# Asks the head's GCS for its keys: the first call a process makes to a Ray cluster, and one Ray answers or refuses
# at once (ray.init would retry a refusal for 20 s).
GCS_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=10)
except Exception as e:
    sys.exit(f"refused: {type(e).__name__}: {e}")
"""


def test_ray_head_refuses_a_process_without_its_token(ray_serve):
    state = json.loads((ray_serve.state_dir / ops.STATE_FILE).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}

    def probe(extra: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", GCS_PROBE, state["address"]], env={**env, **extra},
                              capture_output=True, text=True, timeout=60)

    assert probe(ops.ray_auth_env(ray_serve.state_dir)).returncode == 0  # the state dir's token: let in
    for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):  # none, or a wrong one
        refused = probe(extra)
        assert refused.returncode != 0 and "AuthenticationError" in refused.stderr, refused.stderr[-500:]


def test_ray_container_serves_the_store_and_stops_on_sigterm(model_store, tmp_path):
    """The image's entry point for SERVER=ray, started as deploy/entrypoint.sh starts it, on a free loopback port."""
    state_dir, out, port = tmp_path / "state", tmp_path / "container.out", free_ports(1)[0]
    env = {**os.environ, "MODEL_STORE": str(model_store), "STATE_DIR": str(state_dir), "BIND_ADDRESS": "127.0.0.1",
           "TOKEN_AUTH": "on", "INFERENCE_PORT": str(port), CACHE_ENV: str(tmp_path / "bundles")}
    with open(out, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "textclf.cli", "ray-container"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    state = None
    try:
        deadline = time.monotonic() + 300
        while "serving " not in out.read_text(errors="replace"):
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        state = json.loads((state_dir / ops.STATE_FILE).read_text())
        client = TorchServeClient(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", state_dir / ops.KEY_FILE)
        assert set(client.predict(NAME, "hello")["scores"]) == V1_LABELS  # file-name order: 1.0 is the default
        assert set(client.predict(NAME, "hello", version="2.0")["scores"]) == V2_LABELS
        bare = requests.post(f"http://127.0.0.1:{port}/predictions/{NAME}", data=b"hello", timeout=30,
                             headers={"Content-Type": "text/plain"})
        assert bare.status_code == 400 and bare.json()["type"] == "InvalidKeyException"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        said = out.read_text(errors="replace")
        assert said.splitlines()[-1] == "stopped on SIGTERM" and "Traceback" not in said, said[-3000:]
        assert ops.head_processes(state) == [] and not (state_dir / ops.KEY_FILE).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        ops.stop_head(state_dir)


def test_one_command_serves_an_archive_and_a_bad_one_leaves_nothing(model_store, tmp_path):
    port, state_dir = free_ports(1)[0], tmp_path / "one"
    base = ["--state-dir", str(state_dir), "--port", str(port), "-q"]
    try:
        assert ops.command(["ray-serve", *base, "--source", str(model_store / f"{NAME}-2.0.mar")]) == 0
        key_file = state_dir / ops.KEY_FILE
        url = f"http://127.0.0.1:{port}"
        assert set(TorchServeClient(url, url, key_file).predict(NAME, "hello")["scores"]) == V2_LABELS
    finally:
        assert ops.command(["ray-stop", "--state-dir", str(state_dir), "-q"]) == 0
    # A source that cannot be served: the command fails in one line and stops the head it started.
    heads = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"}
    assert ops.command(["ray-serve", *base, "--source", str(tmp_path / "missing.mar")]) == 2
    assert not (state_dir / ops.STATE_FILE).exists()
    assert {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"} <= heads
