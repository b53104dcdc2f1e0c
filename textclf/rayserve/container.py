"""The serving image's entry point for SERVER=ray: a Ray head, Ray Serve and every archive of a model store, until
SIGTERM or SIGINT stops them. The same contract as textclf/torchserve/container.py where it applies:

  MODEL_STORE      /home/model-server/model-store. Every *.mar there is deployed at start, in file-name order:
                   the first version of a model is its default. A store without any .mar is an error (exit 2).
  BIND_ADDRESS     0.0.0.0. The address of the HTTP listener (Ray's own ports stay on the pod's network).
  TOKEN_AUTH       on: the inference key of $STATE_DIR/key_file.json (TorchServe's format, written at start) is the
                   bearer token, /ping included. off: no token, refused (exit 2) unless BIND_ADDRESS is a loopback
                   address, i.e. only behind the auth sidecar.
  STATE_DIR        /home/model-server/state: key_file.json, state.json, serve-config.yaml, ray-head.log, and the
                   extracted archives (bundles/).
  INFERENCE_PORT   8080: TorchServe's URLs and bodies (textclf/rayserve/app.py), plus /ready and /docs.
  START_TIMEOUT_S  300: for the head, the ingress and each archive's replicas.

Each archive runs as its model-config.yaml plans it (batch size and delay, minWorkers replicas, threads per
replica). Exit codes: 0 after a stop on SIGTERM/SIGINT, 1 when Ray or a deployment fails or the head dies,
2 for bad settings.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from textclf.core.errors import Failure
from textclf.core.options import run
from textclf.rayserve import ops
from textclf.rayserve.shape import CACHE_ENV
from textclf.torchserve.container import Stopped, _number, _raise_stopped, read_contract

DEFAULTS = {"MODEL_STORE": "/home/model-server/model-store", "STATE_DIR": "/home/model-server/state",
            "BIND_ADDRESS": "0.0.0.0", "TOKEN_AUTH": "on", "INFERENCE_PORT": "8080", "START_TIMEOUT_S": "300"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    store: Path
    archives: list[Path]
    state_dir: Path
    bind: str
    port: int
    token_auth: bool
    start_timeout_s: int


def settings(env: Mapping[str, str]) -> Settings:
    """The settings the contract above describes for the environment `env`; UserError if they are not valid."""
    c = read_contract(env, DEFAULTS, "Ray Serve")
    return Settings(c.store, c.archives, Path(c.settings["STATE_DIR"]), c.bind,
                    _number("INFERENCE_PORT", c.settings["INFERENCE_PORT"], 1, 65535), c.token_auth,
                    _number("START_TIMEOUT_S", c.settings["START_TIMEOUT_S"], 1))


@dataclass
class RayContainerConfig:
    """Ray Serve serving every archive of $MODEL_STORE; settings come from the environment
    (python -m textclf.rayserve.container; see the contract at the top of textclf/rayserve/container.py)."""


def _catch_signals() -> None:
    """SIGTERM and SIGINT unwind to the stop. Set again after each command that connected to Ray: ray.init
    replaces this process's SIGTERM handler with its own, and the container then died of the signal (exit -15)
    instead of stopping Ray."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)


def serve(_: RayContainerConfig, env: Mapping[str, str] = os.environ) -> str:
    cfg = settings(env)
    os.environ.setdefault(CACHE_ENV, str(cfg.state_dir / "bundles"))  # inherited by the head, so by the replicas
    _catch_signals()
    try:
        state = ops.start_head(cfg.state_dir, cfg.bind, cfg.port, cfg.token_auth, cfg.start_timeout_s)
        _catch_signals()
        for archive in cfg.archives:  # file-name order: the first version of a name becomes its default
            ops.deploy(cfg.state_dir, {"source": str(archive.resolve())}, timeout_s=cfg.start_timeout_s)
            _catch_signals()
        log.info("serving %s on %s (token authorization %s)", ",".join(a.name for a in cfg.archives), state["url"],
                 "on" if cfg.token_auth else "off")
        while ops.head_alive(cfg.state_dir):
            time.sleep(1)
        raise Failure(f"the Ray head stopped on its own; {ops.head_log_tail(cfg.state_dir)}")
    except Stopped as e:
        return f"stopped on {e}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        ops.stop_head(cfg.state_dir)


def command(argv=None, prog="python -m textclf.rayserve.container") -> int:
    return run(serve, RayContainerConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
