"""What the server exposes: every listener on loopback (in both configs and on the running server's sockets),
and no request content in any log file, for valid and invalid requests over REST and gRPC."""
from __future__ import annotations

import ipaddress
import json
import time
import uuid
from urllib.parse import urlparse

import psutil
import pytest
import requests

from tests.live.conftest import NAME
from tests.live.test_rest import assert_prediction
from textclf.core import paths
from textclf.torchserve import properties, server
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.keys import bearer, read_keys

pytestmark = pytest.mark.live
CONFIGS = [paths.SERVER_CONFIG, paths.LOCKED_CONFIG]


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # the JVM listens on ::ffff:127.0.0.1
    return (mapped or address).is_loopback


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_configured_listeners_are_loopback(config):
    props = properties.read_properties(config)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert is_loopback(urlparse(props[key]).hostname), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert is_loopback(props[key]), key


def test_running_server_listens_on_loopback_only(live):
    listening = []
    for procs in server.processes(server.running_pid(live.cfg)).values():  # the launcher, the JVM, the workers
        for proc in procs:
            try:
                listening += [c.laddr for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
    assert sorted(a.port for a in listening) == sorted(live.endpoints.ports().values())
    assert all(is_loopback(a.ip) for a in listening), listening


def test_request_content_never_reaches_the_logs(live):
    marker = f"marker{uuid.uuid4().hex}"
    url = f"{live.endpoints.inference_url}/predictions/{NAME}"
    auth = bearer(read_keys(live.endpoints.key_file).inference)
    bodies = [  # (body, content type, expected status): valid and invalid, every field the parser reads
        (json.dumps({"text": f"valid {marker}"}), "application/json", 200),
        (json.dumps({"texts": [f"a {marker}", "b"], "top_k": 1}), "application/json", 200),
        (json.dumps({"instances": [{"text": marker}]}), "application/json", 200),
        (f"plain {marker} \U0001F600", "text/plain", 200),
        (json.dumps({"text": f"long {marker} " * 30_000}), "application/json", 200),
        (f'{{"text": "{marker}', "application/json", 400),
        (f'{{"{marker}": "typo"}}', "application/json", 400),
        (json.dumps({"text": marker, "top_k": marker}), "application/json", 400),
        (json.dumps({"texts": [marker, 5]}), "application/json", 400),
        (json.dumps({"texts": [marker] * 65}), "application/json", 413),
        (json.dumps({"text": f"{marker} \ud800"}), "application/json", 400),
        (f'{{"text": "{marker}'.encode() + b'\xff"}', "application/json", 400),
        (f"{marker} ".encode() + b"\xff", "text/plain", 400),
    ]
    logs = live.state_dir / "logs"
    access_before = (logs / "access_log.log").stat().st_size
    for body, content_type, status in bodies:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        r = requests.post(url, data=data, headers={**auth, "Content-Type": content_type}, timeout=60)
        assert r.status_code == status, (body[:60], r.text)
    assert live.grpc.predict(NAME, f"grpc {marker}")["label"]
    with pytest.raises(TorchServeError):
        live.grpc.predict_raw(NAME, f'{{"text": ["{marker}"]}}'.encode())

    time.sleep(1)  # log4j and the workers' stdout pipe flush within milliseconds; leave them ample time
    assert (logs / "access_log.log").stat().st_size > access_before  # the logs are live and were written to
    leaked = [str(p) for p in logs.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
    assert leaked == []


def test_form_encoded_body_gets_a_clear_400(live):
    """`curl -d '{"text": ...}'` without -H sends a form; TorchServe hands the handler no body for it."""
    url = f"{live.endpoints.inference_url}/predictions/{NAME}"
    auth = bearer(read_keys(live.endpoints.key_file).inference)
    r = requests.post(url, data=b'{"text": "hello"}',
                      headers={**auth, "Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
    assert r.status_code == 400, r.text
    assert "Content-Type" in r.text, r.text
    assert_prediction(live.rest.predict(NAME, "still serving"))


def test_server_logs_once_at_info(live):
    """The project's log4j2.xml is in use: no DEBUG lines, no line logged twice, stdout kept for warnings."""
    assert_prediction(live.rest.predict(NAME, "log check"))
    time.sleep(1)
    logs = live.state_dir / "logs"
    lines = (logs / "ts_log.log").read_text(errors="replace").splitlines()
    assert lines and not [line for line in lines if "[DEBUG]" in line]
    stamped = [line for line in lines if line[:4].isdigit()]  # not a multi-line message's continuation
    assert len(stamped) == len(set(stamped))  # TorchServe's default config writes every line twice
    out = (logs / "torchserve.out").read_text(errors="replace")
    assert "[INFO ]" not in out and "[DEBUG]" not in out
