"""Start/stop of a second, model-less server: stale state never blocks a start, stop leaves nothing."""
import os

import psutil
import pytest

from textclf.torchserve import properties, server
from textclf.torchserve.ports import free_port_overrides, port_in_use

pytestmark = pytest.mark.live


def our_processes(state_dir) -> list:
    """Every process whose environment names this state dir: an oracle independent of server.processes (which
    goes by process group), so a process that escaped the group would still be found."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if (proc.info["environ"] or {}).get("LOG_LOCATION") == str(state_dir / "logs"):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def cfg(tmp_path, live):  # `live` first: the model store exists, and the two servers never start together
    cfg = properties.ServerConfig(state_dir=tmp_path / "state", model_store=live.store,
                              ports=free_port_overrides())
    yield cfg
    server.stop(cfg)


def test_start_after_stale_state_then_stop_cleanly(cfg):
    logs = cfg.state_dir / "logs"
    (logs / "tmp").mkdir(parents=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    (cfg.state_dir / server.PID_FILE).write_text(f"{dead.pid}\n")  # a server that crashed
    (logs / "tmp/.model_server.pid").write_text(f"{dead.pid}\n")  # TorchServe's own pid file
    (cfg.state_dir / properties.KEY_FILE).write_text("{}")

    ep = server.start(cfg)
    assert server.running_pid(cfg) is not None
    with pytest.raises(properties.ServerError, match="already running"):
        server.start(cfg)
    assert set(properties.read_properties(cfg.effective_config())) >= {"inference_address", "grpc_inference_port"}
    assert our_processes(cfg.state_dir)

    assert server.stop(cfg) is True
    assert our_processes(cfg.state_dir) == []
    assert not ep.key_file.exists() and not (cfg.state_dir / server.PID_FILE).exists()
    assert not any(port_in_use(p) for p in ep.ports().values())
    assert server.stop(cfg) is False  # stopping twice is harmless

    server.start(cfg)  # `make serve` right after `make stop`
    assert server.stop(cfg) is True


def test_port_in_use_is_reported(cfg, live):
    busy = dict(cfg.ports, inference=live.endpoints.ports()["inference"])
    taken = properties.ServerConfig(state_dir=cfg.state_dir, model_store=cfg.model_store, ports=busy)
    with pytest.raises(properties.ServerError, match=f"inference port {busy['inference']} already in use"):
        server.start(taken)
    assert our_processes(cfg.state_dir) == []


def test_missing_model_store_is_reported(tmp_path):
    cfg = properties.ServerConfig(state_dir=tmp_path, model_store=tmp_path / "nope", ports={"inference": 1})
    with pytest.raises(properties.ServerError, match="nope does not exist"):
        server.start(cfg)
    assert os.listdir(tmp_path) == []
