"""The serving image's entry point on this host, started exactly as the image starts it (python -m
textclf.torchserve.container, settings in the environment) but on free loopback ports: it serves every archive of its
model store with the model API locked, and SIGTERM or SIGINT to it makes TorchServe shut itself down, leaving no
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

from tests.conftest import tool_missing
from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from tests.live.test_server import our_processes
from textclf.core import paths
from textclf.torchserve import container, properties, server
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.ports import free_ports, port_in_use
from textclf.torchserve.rest import TorchServeClient

pytestmark = pytest.mark.live
# Bounds against a hang, not speed checks (speed is measured by the benchmarks): start, and stop after a signal.
START_S, HANG_S = 180, 60


def _wait_for_line(proc: subprocess.Popen, out: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in out.read_text(errors="replace"):
        assert proc.poll() is None, f"the entry point exited with {proc.returncode}:\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{out.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.mark.parametrize("stop_signal, token_auth", [(signal.SIGTERM, "on"), (signal.SIGINT, "off")])
def test_entrypoint_serves_the_store_locked_and_stops_on_a_signal(model_store, stop_signal, token_auth):
    if shutil.which("java") is None:
        tool_missing("java not installed: TorchServe needs a JRE 11+ (make java-check)")
    base = Path(tempfile.mkdtemp(prefix="ts-entrypoint-")).resolve()
    state, out = base / "state", base / "entrypoint.out"
    ports = dict(zip(container.PORT_VARS, free_ports(len(container.PORT_VARS)), strict=False))
    env = {**os.environ, **{var: str(port) for var, port in ports.items()}, "MODEL_STORE": str(model_store),
           "STATE_DIR": str(state), "BIND_ADDRESS": "127.0.0.1", "TOKEN_AUTH": token_auth}
    # Append mode: TorchServe's output reaches this file through a second handle (the link to our stdout).
    with open(out, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "textclf.torchserve.container"], cwd=paths.ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_line(proc, out, "serving ", START_S)  # printed once every archive's workers are READY
        ts_group = int((state / server.PID_FILE).read_text())
        inference, management = (f"http://127.0.0.1:{ports[v]}" for v in ("INFERENCE_PORT", "MANAGEMENT_PORT"))
        client = TorchServeClient(inference, management, state / properties.KEY_FILE, backoff_s=0.1)

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
            assert bare.status_code == 200 and not (state / properties.KEY_FILE).exists()
        assert our_processes(state)

        proc.send_signal(stop_signal)
        # Stopped cleanly: exit 0, its last word the signal's (no error or traceback after it), no process of
        # this server left (launcher, JVM, workers), its ports free and its key and pid files gone.
        assert proc.wait(timeout=HANG_S) == 0
        said = out.read_text(errors="replace")
        assert said.splitlines()[-1] == f"stopped on {stop_signal.name}" and "Traceback" not in said, said[-3000:]
        assert our_processes(state) == [] and not any(server.processes(ts_group).values())
        assert not any(port_in_use(port) for port in ports.values())
        assert not (state / properties.KEY_FILE).exists() and not (state / server.PID_FILE).exists()
    finally:
        if proc.poll() is None:  # a failed assertion: the entry point stops TorchServe itself, or is killed
            proc.terminate()
            try:
                proc.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for leftover in our_processes(state):  # only processes of this server, found by their state dir
            leftover.kill()
        shutil.rmtree(base, ignore_errors=True)
