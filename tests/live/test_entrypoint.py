"""The serving image's entry point on this host, started exactly as the image starts it (python -m
tsclient.container, settings in the environment) but on free loopback ports: it serves every archive of its
model store with the model API locked, and SIGTERM or SIGINT to it stops TorchServe at once, leaving no
process and no key file behind. Once with TorchServe's token authorization, once with TOKEN_AUTH=off on
127.0.0.1 (the Kubernetes auth-sidecar setup)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from tests.live.test_server import our_processes
from tsclient import container, server
from tsclient.rest import TorchServeClient, TorchServeError

pytestmark = pytest.mark.live
START_S, STOP_S = 180, 15  # stop: the entry point's own deadline (8 s) plus the launcher's exit


def _wait_for_line(proc: subprocess.Popen, out: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in out.read_text(errors="replace"):
        assert proc.poll() is None, f"the entry point exited with {proc.returncode}:\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{out.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.mark.parametrize("stop_signal, token_auth", [(signal.SIGTERM, "on"), (signal.SIGINT, "off")])
def test_entrypoint_serves_the_store_locked_and_stops_on_a_signal(model_store, stop_signal, token_auth):
    if shutil.which("java") is None:
        pytest.skip("java not installed: TorchServe needs a JRE 11+ (make java-check)")
    base = Path(tempfile.mkdtemp(prefix="ts-entrypoint-")).resolve()
    state, out = base / "state", base / "entrypoint.out"
    ports = dict(zip(container.PORT_VARS, server.free_ports(len(container.PORT_VARS))))
    env = {**os.environ, **{var: str(port) for var, port in ports.items()}, "MODEL_STORE": str(model_store),
           "STATE_DIR": str(state), "BIND_ADDRESS": "127.0.0.1", "TOKEN_AUTH": token_auth}
    # Append mode: TorchServe's output reaches this file through a second handle (the link to our stdout).
    with open(out, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "tsclient.container"], cwd=server.ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_line(proc, out, "serving ", START_S)  # printed once every archive's workers are READY
        ts_group = int((state / server.PID_FILE).read_text())
        inference, management = (f"http://127.0.0.1:{ports[v]}" for v in ("INFERENCE_PORT", "MANAGEMENT_PORT"))
        client = TorchServeClient(inference, management, state / server.KEY_FILE, backoff_s=0.1)

        assert set(client.predict(NAME, "hello")["scores"]) == V1_LABELS  # file-name order: 1.0 is the default
        assert set(client.predict(NAME, "hello", version="2.0")["scores"]) == V2_LABELS
        with pytest.raises(TorchServeError) as e:
            client.register("other", f"{NAME}-1.0.mar")
        assert (e.value.status, e.value.kind) == (405, "MethodNotAllowedException")
        bare = requests.post(f"{inference}/predictions/{NAME}", data=b"hello", headers={"Content-Type": "text/plain"},
                             timeout=30)
        if token_auth == "on":
            assert bare.status_code == 400 and bare.json()["type"] == "InvalidKeyException"
        else:
            assert bare.status_code == 200 and not (state / server.KEY_FILE).exists()
        assert our_processes(state)

        started = time.monotonic()
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=STOP_S + 30) == 0
        assert time.monotonic() - started < STOP_S
        assert f"stopped on {stop_signal.name}" in out.read_text()
        assert our_processes(state) == [] and not any(server.processes(ts_group).values())
        assert not any(server.port_in_use(port) for port in ports.values())
        assert not (state / server.KEY_FILE).exists()
    finally:
        if proc.poll() is None:  # a failed assertion: the entry point stops TorchServe itself, or is killed
            proc.terminate()
            try:
                proc.wait(timeout=STOP_S + 30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for leftover in our_processes(state):  # only processes of this server, found by their state dir
            leftover.kill()
        shutil.rmtree(base, ignore_errors=True)
