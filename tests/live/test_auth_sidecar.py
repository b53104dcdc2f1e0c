"""The Kubernetes auth sidecar for real: deploy/k8s/base/nginx/ (the template, the main nginx.conf and the token
check), rendered with envsubst as the nginx image does, run by this host's nginx in front of a live TorchServe
started exactly as the pod starts it (textclf.torchserve.container.server_config: BIND_ADDRESS=127.0.0.1, TOKEN_AUTH=off),
on free loopback ports. One token for REST and gRPC; missing or wrong tokens never reach TorchServe; metrics and
/ping answer without it on the probe listener only; management is not reachable; no token is ever logged.

Skips without java (TorchServe) or without an nginx binary (`apt-get install -y nginx-light`; `make test` installs it
through scripts/ensure_test_tools.sh), and fails instead under CI=true.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import tool_missing
from tests.live.conftest import NAME, V1_LABELS
from textclf.torchserve import server
from textclf.torchserve.ports import free_port_overrides, free_ports

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "deploy" / "k8s" / "base" / "nginx"
TEMPLATE = NGINX_DIR / "textclf.conf.template"
MAIN_CONF = NGINX_DIR / "nginx.conf"
CHECK_TOKEN = NGINX_DIR / "check-token.sh"
TOKEN = secrets.token_hex(32)  # what `openssl rand -hex 32` makes; new for every run
WRONG = secrets.token_hex(32)
GRPC_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"


def _nginx() -> str:
    sbin = (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK))
    found = shutil.which("nginx") or next(sbin, None)
    if found is None:
        tool_missing("no nginx binary: install it with `apt-get install -y nginx-light` to test the auth sidecar")
    return found


def render(template: str, env: dict[str, str]) -> str:
    """What the nginx image's 20-envsubst-on-templates.sh does with NGINX_ENVSUBST_FILTER=^TEXTCLF_: substitute
    only the defined TEXTCLF_* variables, leave every other $word (nginx's own variables) alone."""
    names = sorted(k for k in env if k.startswith("TEXTCLF_"))
    if shutil.which("envsubst"):
        return subprocess.run(["envsubst", " ".join(f"${{{n}}}" for n in names)], input=template, text=True,
                              capture_output=True, check=True, env={**os.environ, **env}).stdout
    return re.sub(r"\$\{(TEXTCLF_\w+)\}", lambda m: env.get(m.group(1), m.group(0)), template)


def _wait_listening(ports, proc, deadline_s=20.0) -> None:
    deadline = time.monotonic() + deadline_s
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with code {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx does not listen on {port}") from None
                time.sleep(0.1)


@pytest.fixture(scope="module")
def backend(model_store):
    """TorchServe as the pod runs it: textclf.torchserve.container's config for the sidecar's environment."""
    if shutil.which("java") is None:
        tool_missing("java not installed: TorchServe needs a JRE 11+ (make java-check)")
    from textclf.torchserve.container import server_config

    base = Path(tempfile.mkdtemp(prefix="ts-sidecar-"))
    store = base / "store"
    store.mkdir()
    shutil.copy(model_store / f"{NAME}-1.0.mar", store)
    ports = free_port_overrides()
    env = {"MODEL_STORE": str(store), "STATE_DIR": str(base / "state"), "BIND_ADDRESS": "127.0.0.1",
           "TOKEN_AUTH": "off", **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()}}
    cfg = server_config(env)
    try:
        endpoints = server.start(cfg)
        assert not endpoints.key_file.exists()  # token authorization really is off behind the sidecar
        yield cfg, endpoints
    finally:
        server.stop(cfg)
        shutil.rmtree(base, ignore_errors=True)


class Sidecar:
    def __init__(self, ports: dict[str, int], prefix: Path, proc: subprocess.Popen):
        self.ports, self.prefix, self.proc = ports, prefix, proc
        self.http = f"http://127.0.0.1:{ports['TEXTCLF_HTTP_PORT']}"
        self.probe = f"http://127.0.0.1:{ports['TEXTCLF_PROBE_PORT']}"
        self.grpc = f"127.0.0.1:{ports['TEXTCLF_GRPC_PORT']}"

    def logs(self) -> str:
        return "".join((self.prefix / name).read_text(errors="replace") for name in ("stdout.log", "stderr.log"))


@pytest.fixture(scope="module")
def sidecar(backend):
    nginx = _nginx()
    _, ep = backend
    ts_ports = ep.ports()
    listen = dict(zip(("TEXTCLF_HTTP_PORT", "TEXTCLF_GRPC_PORT", "TEXTCLF_PROBE_PORT"), free_ports(3), strict=False))
    env = {"TEXTCLF_TOKEN": TOKEN, **{k: str(v) for k, v in listen.items()},
           "TEXTCLF_TS_INFERENCE_PORT": str(ts_ports["inference"]),
           "TEXTCLF_TS_GRPC_PORT": str(ts_ports["grpc_inference"]),
           "TEXTCLF_TS_METRICS_PORT": str(ts_ports["metrics"])}
    prefix = Path(tempfile.mkdtemp(prefix="nginx-sidecar-"))
    prefix.chmod(0o755)  # nginx's workers run as nobody here (root) and must reach the temp paths
    proc = None
    try:
        (prefix / "conf.d").mkdir()
        conf = prefix / "conf.d" / "textclf.conf"
        conf.write_text(render(TEMPLATE.read_text(), env))
        conf.chmod(0o600)  # it holds the token; only nginx's master (root) reads it
        # The pod's own main configuration, its two absolute directories moved here.
        main = MAIN_CONF.read_text().replace("/tmp/", f"{prefix}/").replace("/etc/nginx/conf.d/", f"{prefix}/conf.d/")
        (prefix / "nginx.conf").write_text(main)
        args = [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "stderr.log")]
        check = subprocess.run(args + ["-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with open(prefix / "stdout.log", "wb") as out, open(prefix / "stderr.log", "ab") as err:
            # In the foreground, as the image runs it (CMD nginx -g 'daemon off;'); stdout is the access log.
            proc = subprocess.Popen(args + ["-g", "daemon off;"], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _wait_listening(listen.values(), proc)
        yield Sidecar(listen, prefix, proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful stop, the image's STOPSIGNAL
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        shutil.rmtree(prefix, ignore_errors=True)


def _bearer(token):
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def _key_file(path: Path, token: str) -> Path:
    """A key file in TorchServe's format holding the shared token, so the project's clients send it unchanged."""
    path.write_text(json.dumps({api: {"key": token} for api in ("management", "inference", "API")}))
    return path


# --- the token check itself -------------------------------------------------------------------------------

@pytest.mark.parametrize("token, ok", [(None, False), ("", False), ("a" * 31, False), ("a" * 31 + '"', False),
                                       ("a" * 40 + "; return 200", False), ("a" * 40 + "$x", False),
                                       (TOKEN, True), ("A-z_0" * 8, True)],
                         ids=["missing", "empty", "short", "quote", "directive", "variable", "hex", "urlsafe"])
def test_check_token_refuses_what_could_not_sit_in_the_config(token, ok):
    """05-check-token.sh runs before the image renders the template: a missing, short or unsafe token stops the
    container instead of giving nginx an empty or broken comparison. It never prints the token."""
    env = {k: v for k, v in os.environ.items() if k != "TEXTCLF_TOKEN"}
    if token is not None:
        env["TEXTCLF_TOKEN"] = token
    r = subprocess.run(["sh", str(CHECK_TOKEN)], env=env, capture_output=True, text=True)
    assert (r.returncode == 0) is ok, r.stderr
    assert not token or token not in r.stdout + r.stderr
    if not ok:
        assert "refusing to start" in r.stderr


def test_rendered_config_holds_no_unrendered_variable_and_logs_no_header():
    rendered = render(TEMPLATE.read_text(), {"TEXTCLF_TOKEN": TOKEN, "TEXTCLF_HTTP_PORT": "1", "TEXTCLF_GRPC_PORT": "2",
                                             "TEXTCLF_PROBE_PORT": "3", "TEXTCLF_TS_INFERENCE_PORT": "4",
                                             "TEXTCLF_TS_GRPC_PORT": "5", "TEXTCLF_TS_METRICS_PORT": "6"})
    assert "${" not in "\n".join(line for line in rendered.splitlines() if not line.lstrip().startswith("#"))
    assert rendered.count(f'"Bearer {TOKEN}"') == 2  # REST and gRPC; the probe listener has no check
    assert "$uri" in rendered and "$upstream_status" in rendered  # nginx's own variables left alone
    log_format = re.search(r"log_format\s+textclf_access\s+(.*?);", rendered, re.S).group(1)
    assert "$http_authorization" not in log_format and "$request " not in log_format and "$args" not in log_format


# --- REST ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ping", f"/predictions/{NAME}"])
def test_rest_needs_the_token(sidecar, path):
    method = requests.get if path == "/ping" else requests.post
    body = {"json": {"text": "hello"}} if path != "/ping" else {}
    # (A trailing space would pass: HTTP strips it from every header value before anyone compares.)
    for refused in (None, "", WRONG, TOKEN.upper(), TOKEN[:-1], TOKEN + "0", f"{TOKEN}x{TOKEN}"):
        r = method(sidecar.http + path, headers=_bearer(refused), timeout=10, **body)
        assert r.status_code == 401, (refused is None, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer") and r.json()["type"] == "Unauthorized"
    for refused in ({"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}, {"X-Token": TOKEN}):
        assert method(sidecar.http + path, headers=refused, timeout=10, **body).status_code == 401
    r = method(sidecar.http + path, headers=_bearer(TOKEN), timeout=60, **body)
    assert r.status_code == 200, r.text
    if path == "/ping":
        assert r.json() == {"status": "Healthy"}
    else:
        assert set(r.json()["scores"]) == V1_LABELS


def test_refused_requests_never_reach_torchserve(sidecar, backend):
    cfg, _ = backend
    refused, passed = f"refused-{uuid.uuid4().hex}", f"passed-{uuid.uuid4().hex}"
    assert requests.post(f"{sidecar.http}/predictions/{refused}", headers=_bearer(WRONG), json={"text": "x"},
                         timeout=10).status_code == 401
    assert requests.post(f"{sidecar.http}/predictions/{passed}", json={"text": "x"}, timeout=10).status_code == 401
    # An unknown model with the right token: TorchServe itself answers (404), and its access log shows it.
    assert requests.post(f"{sidecar.http}/predictions/{refused}x", headers=_bearer(TOKEN), json={"text": "x"},
                         timeout=10).status_code == 404
    access = cfg.state_dir / "logs" / "access_log.log"
    deadline = time.monotonic() + 10
    while f"{refused}x" not in (access.read_text() if access.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    text = access.read_text()
    assert f"{refused}x" in text
    assert f"/predictions/{refused} " not in text and passed not in text


def test_project_rest_client_works_through_the_sidecar(sidecar, tmp_path):
    from textclf.torchserve.rest import TorchServeClient

    client = TorchServeClient(sidecar.http, "http://127.0.0.1:9", _key_file(tmp_path / "key_file.json", TOKEN))
    answer = client.predict(NAME, texts=["the battery lasts forever", "why was my payment declined"])
    assert len(answer) == 2 and all(set(p["scores"]) == V1_LABELS for p in answer)
    assert client.health() == {"status": "Healthy"}


def test_management_is_not_reachable_even_with_the_token(sidecar):
    for method, path in (("GET", "/models"), ("GET", f"/models/{NAME}"), ("PUT", f"/models/{NAME}?min_worker=0"),
                         ("DELETE", f"/models/{NAME}/1.0"), ("GET", "/token?type=inference")):
        r = requests.request(method, sidecar.http + path, headers=_bearer(TOKEN), timeout=10)
        assert r.status_code in (404, 405), (method, path, r.status_code, r.text)
        assert "modelName" not in r.text
    assert requests.post(f"{sidecar.http}/predictions/{NAME}", headers=_bearer(TOKEN), json={"text": "still here"},
                         timeout=60).status_code == 200


# --- probes and metrics ----------------------------------------------------------------------------------------

def test_probe_listener_serves_metrics_and_ping_without_token_and_nothing_else(sidecar):
    requests.post(f"{sidecar.http}/predictions/{NAME}", headers=_bearer(TOKEN), json={"text": "count me"}, timeout=60)
    assert requests.get(f"{sidecar.probe}/ping", timeout=10).json() == {"status": "Healthy"}
    assert requests.get(f"{sidecar.probe}/healthz", timeout=10).text == "ok\n"
    metrics = requests.get(f"{sidecar.probe}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    assert f'model_name="{NAME}"' in metrics.text
    for method, path in (("POST", f"/predictions/{NAME}"), ("GET", "/models"), ("GET", "/"),
                         ("GET", "/metrics/../predictions")):
        r = requests.request(method, sidecar.probe + path, headers=_bearer(TOKEN), json={"text": "x"}, timeout=10)
        assert r.status_code == 404, (method, path, r.status_code)


# --- gRPC ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stubs():
    from textclf.torchserve.grpc_client import StubsMissing, generate_stubs, load_stubs

    try:
        load_stubs()
    except StubsMissing:
        generate_stubs()  # what `make grpc-stubs` does; textclf/torchserve/_proto is gitignored


def test_grpc_inference_with_the_token(sidecar, stubs, tmp_path):
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    with TorchServeGrpcClient(sidecar.grpc, sidecar.grpc, _key_file(tmp_path / "key_file.json", TOKEN)) as client:
        assert client.ping() == {"status": "Healthy"}
        answer = client.predict(NAME, "the battery lasts forever")
        assert set(answer["scores"]) == V1_LABELS
        assert set(client.predict(NAME, texts=["a", "b"], version="1.0")[1]["scores"]) == V1_LABELS


@pytest.mark.parametrize("token", [None, WRONG, TOKEN.upper()], ids=["missing", "wrong", "wrong-case"])
def test_grpc_without_the_right_token_is_unauthenticated(sidecar, stubs, tmp_path, token):
    from textclf.torchserve.errors import TorchServeError
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    key_file = tmp_path / "key_file.json"  # absent: the client sends no authorization metadata at all
    if token is not None:
        _key_file(key_file, token)
    with TorchServeGrpcClient(sidecar.grpc, sidecar.grpc, key_file, retries=0) as client:
        for call in (client.ping, lambda: client.predict(NAME, "hello")):
            with pytest.raises(TorchServeError) as e:
                call()
            assert e.value.status == "UNAUTHENTICATED" and "bearer token" in e.value.message


def test_grpc_management_is_not_exposed(sidecar, stubs, tmp_path):
    from textclf.torchserve.errors import TorchServeError
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    with TorchServeGrpcClient(sidecar.grpc, sidecar.grpc, _key_file(tmp_path / "key_file.json", TOKEN)) as client:
        for call in (lambda: client.describe(NAME), client.list_models, lambda: client.scale(NAME, min_workers=2)):
            with pytest.raises(TorchServeError) as e:
                call()
            assert e.value.status == "UNIMPLEMENTED", e.value


def test_grpc_token_reaches_nginx_not_torchserve_over_raw_grpcio(sidecar, stubs):
    """The same check with grpcio alone (any client, not only ours): metadata `authorization: Bearer <token>`."""
    import grpc
    from google.protobuf import empty_pb2

    from textclf.torchserve.grpc_client import load_stubs

    _, inf_grpc, _, _ = load_stubs()
    with grpc.insecure_channel(sidecar.grpc) as channel:
        stub = inf_grpc.InferenceAPIsServiceStub(channel)
        assert json.loads(stub.Ping(empty_pb2.Empty(), metadata=[("authorization", f"Bearer {TOKEN}")],
                                    timeout=10).health) == {"status": "Healthy"}
        for metadata in ([], [("authorization", f"Bearer {WRONG}")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as e:
                stub.Ping(empty_pb2.Empty(), metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- logs -------------------------------------------------------------------------------------------------------

def test_no_token_is_ever_logged(sidecar, stubs, tmp_path):
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    for token in (TOKEN, WRONG):
        requests.get(f"{sidecar.http}/ping?token={token[:8]}", headers=_bearer(token), timeout=10)
        with TorchServeGrpcClient(sidecar.grpc, sidecar.grpc, _key_file(tmp_path / f"{token[:4]}.json", token),
                                  retries=0) as client:
            try:
                client.ping()
            except Exception:
                pass
    time.sleep(0.5)  # nginx writes its access log line after the response
    logs = sidecar.logs()
    assert re.search(r'"GET /ping HTTP/1\.1" 401', logs) and re.search(r'"GET /ping HTTP/1\.1" 200', logs)
    assert f"/{GRPC_SERVICE}/Ping" in logs  # gRPC calls are logged too
    assert TOKEN not in logs and WRONG not in logs and TOKEN[:8] not in logs and WRONG[:8] not in logs
