"""The serving image's entry point: TorchServe in locked mode (config.locked.properties: model API off)
serving every archive of a model store, until SIGTERM or SIGINT stops it.

Contract (deploy/Dockerfile sets the defaults; deploy/k8s relies on it; change them together):
  MODEL_STORE    /home/model-server/model-store. Every *.mar there is loaded at start, in file-name order:
                 the first version of a model is its default. A store without any .mar is an error
                 (exit 2): a server that serves nothing would look healthy and answer only 404s.
  BIND_ADDRESS   0.0.0.0. The address of all five listeners. The Kubernetes auth-sidecar setup sets
                 127.0.0.1, so that only the sidecar in the pod reaches TorchServe.
  TOKEN_AUTH     on: TorchServe's token authorization, keys in $STATE_DIR/key_file.json (even /ping
                 needs the inference key). off: no tokens, refused (exit 2) unless BIND_ADDRESS is a
                 loopback address, i.e. only behind the sidecar, which does the authorization.
  NUMBER_OF_GPU  TorchServe's number_of_gpu; the CPU image sets 0, empty or unset: every GPU it detects.
  Ports (fixed)  8080 inference, 8081 management, 8082 metrics, 7070 gRPC inference, 7071 gRPC management.

Only for running this on a host next to other servers (tests/live/test_entrypoint.py): INFERENCE_PORT,
MANAGEMENT_PORT, METRICS_PORT, GRPC_INFERENCE_PORT and GRPC_MANAGEMENT_PORT move the listeners;
STATE_DIR (/home/model-server/state: key_file.json, logs/) and START_TIMEOUT_S (300) are the server's.

TorchServe is started and stopped by textclf.torchserve.server, as everywhere else: start() returns once every
archive's workers are READY (or fails with the worker's error), stop() ends its whole process group.
Exit codes: 0 after a stop on SIGTERM/SIGINT, 1 when TorchServe fails or dies, 2 for bad settings.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from textclf.core import paths
from textclf.core.errors import Failure, UserError
from textclf.core.options import run
from textclf.torchserve import properties, server, server_logs

DEFAULTS = {"MODEL_STORE": "/home/model-server/model-store", "STATE_DIR": "/home/model-server/state",
            "BIND_ADDRESS": "0.0.0.0", "TOKEN_AUTH": "on", "NUMBER_OF_GPU": "", "START_TIMEOUT_S": "300"}
PORT_VARS = {f"{name.upper()}_PORT": name for name in properties.PORT_NAMES}  # INFERENCE_PORT -> inference
# Inside the 10 s a container runtime waits after SIGTERM before it kills everything.
STOP_TIMEOUT_S = 8.0
log = logging.getLogger(__name__)


def _loopback(address: str) -> bool:
    try:
        return address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _number(var: str, value: str, low: int = 0, high: int = 1 << 31) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise UserError(f"{var}={value!r} must be a whole number in {low}..{high}")
    return number


@dataclass(frozen=True)
class Contract:
    """What both servers' entry points read the same way (textclf/rayserve/container.py is the other)."""

    settings: dict[str, str]  # every variable of the defaults given, set or defaulted
    bind: str
    token_auth: bool
    store: Path
    archives: list[Path]  # file-name order: the first version of a model is its default


def read_contract(env: Mapping[str, str], defaults: Mapping[str, str], server: str) -> Contract:
    """The environment `env` over `defaults`, checked: TOKEN_AUTH on or off (off only on a loopback BIND_ADDRESS)
    and a MODEL_STORE holding archives. UserError, in one line, if not."""
    settings = {var: env.get(var) or default for var, default in defaults.items()}
    bind, token = settings["BIND_ADDRESS"], settings["TOKEN_AUTH"].lower()
    if token not in ("on", "off"):
        raise UserError(f"TOKEN_AUTH={settings['TOKEN_AUTH']!r} must be on or off")
    if token == "off" and not _loopback(bind):
        raise UserError(f"TOKEN_AUTH=off needs a loopback BIND_ADDRESS (127.0.0.1, behind the auth sidecar), "
                        f"not {bind}: anyone who reaches the port could call {server} without a token")
    store = Path(settings["MODEL_STORE"])
    archives = sorted(store.glob("*.mar")) if store.is_dir() else []
    if not archives:
        raise UserError(f"no model archive (*.mar) in MODEL_STORE={store}: mount a store holding archives "
                        f"or bake them in (build argument MODELS)")
    return Contract(settings, bind, token == "on", store, archives)


def server_config(env: Mapping[str, str]) -> properties.ServerConfig:
    """The ServerConfig the contract above describes for the environment `env`; UserError if it is not valid."""
    contract = read_contract(env, DEFAULTS, "TorchServe")
    settings, bind, store = contract.settings, contract.bind, contract.store
    archives = [p.name for p in contract.archives]
    host = f"[{bind}]" if ":" in bind else bind  # an IPv6 address in a URL
    ports = {name: _number(var, env.get(var) or str(properties.DEFAULT_PORTS[name]), 1, 65535)
             for var, name in PORT_VARS.items()}
    props = {key: f"http://{host}:{ports[name]}" if kind == "url" else str(ports[name])
             for name, (key, kind) in properties.PORT_KEYS.items()}
    props.update(grpc_inference_address=bind, grpc_management_address=bind, load_models=",".join(archives),
                 disable_token_authorization=str(not contract.token_auth).lower())
    if settings["NUMBER_OF_GPU"]:
        props["number_of_gpu"] = str(_number("NUMBER_OF_GPU", settings["NUMBER_OF_GPU"]))
    return properties.ServerConfig(config=paths.LOCKED_CONFIG, state_dir=Path(settings["STATE_DIR"]), model_store=store,
                               properties=props, stop_timeout_s=STOP_TIMEOUT_S,
                               start_timeout_s=_number("START_TIMEOUT_S", settings["START_TIMEOUT_S"], 1))


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: unwind to the stop in serve()'s finally, wherever start() or the wait was."""


def _raise_stopped(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


@dataclass
class ContainerConfig:
    """TorchServe in locked mode serving every archive of $MODEL_STORE; settings come from the environment
    (python -m textclf.torchserve.container; see the contract at the top of textclf/torchserve/container.py)."""


def serve(_: ContainerConfig, env: Mapping[str, str] = os.environ) -> str:
    cfg = server_config(env)
    # TorchServe's stdout (warnings and errors, see log4j2.xml) joins ours, the container's log, instead of
    # logs/torchserve.out: start() appends to that path, so it becomes a link to this process's stdout.
    out = cfg.state_dir / server_logs.OUT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    out.symlink_to("/proc/self/fd/1")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)
    try:
        endpoints = server.start(cfg)
        log.info("serving %s on %s (token authorization %s)", cfg.properties["load_models"],
                    endpoints.inference_url, "off" if cfg.properties["disable_token_authorization"] == "true" else "on")
        while server.running_pid(cfg) is not None:
            time.sleep(1)
        raise Failure(f"TorchServe stopped on its own; {server_logs.log_tail(cfg)}")
    except Stopped as e:
        return f"stopped on {e}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        server.stop(cfg)


def command(argv=None, prog="python -m textclf.torchserve.container") -> int:
    return run(serve, ContainerConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
