"""Operate a local Ray Serve: a Ray head of our own, the ingress, one application per model version.

    textclf ray-serve                                  # Ray head + ingress on 127.0.0.1:8000, token auth on
    textclf ray-deploy --source model-archive/store/classifier-1.0.mar --name classifier --version 1.0
    textclf ray-scale --name classifier --version 1.0 --replicas 2
    textclf ray-set-default --name classifier --version 2.0     # roll forward (or back); no request dropped
    textclf ray-undeploy --name classifier --version 1.0
    textclf ray-status
    textclf ray-stop

The head is `ray start --head --block` in a process group of its own, with its temp dir under /tmp (Ray's socket
paths must stay short) and its state (state.json, key_file.json, the Serve config it runs, the head's log) in
--state-dir. Every command connects with ray.init(address, namespace) and applies the whole Serve config (the
import paths and args of textclf/rayserve/app.py, as a RayService holds them) through Serve's controller: the call
`serve deploy` makes behind the dashboard, which the head does without (it saves a process and its memory). A
config applied that way gives each application a code version from its import path, so a changed routing table
or replica count updates the running replicas (reconfigure, scale) instead of restarting them.

Results are printed as JSON; a mistake exits 2, a failure 1 (textclf.core.errors).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from handlers.checks import check_int
from textclf.core import paths
from textclf.core.errors import Failure, UserError
from textclf.core.files import write_atomically
from textclf.core.options import option, run
from textclf.rayserve.app import ingress_config
from textclf.rayserve.shape import (
    INGRESS_APP,
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    ModelShape,
    RayServeError,
    app_name,
    with_default,
    with_version,
    without_version,
)
from textclf.torchserve.keys import bearer, read_keys
from textclf.torchserve.ports import free_ports, port_in_use

log = logging.getLogger(__name__)
NAMESPACE = "textclf"
STATE_FILE = "state.json"
KEY_FILE = "key_file.json"
CONFIG_FILE = "serve-config.yaml"  # the Serve config running now: `serve deploy`-able, a RayService's serveConfigV2
HEAD_LOG = "ray-head.log"
# Ray's own token: the head's ports (GCS, raylet, workers) listen on every interface whatever --node-ip-address says,
# and whoever reaches an unauthenticated GCS can run code in the cluster. Ray 2.60 checks this token on all of them
# (RAY_AUTH_MODE=token); it is the cluster's, apart from the inference key clients send.
RAY_TOKEN_FILE = "ray_auth_token"
MODEL_IMPORT, INGRESS_IMPORT = "textclf.rayserve.app:model_app", "textclf.rayserve.app:ingress_app"
OBJECT_STORE_BYTES = 150 * 1024 * 1024  # requests and answers are small; Ray's default is 30% of RAM
STOP_TIMEOUT_S = 8.0  # inside the 10 s a container runtime waits after SIGTERM


class NotRunning(Failure):
    """No Ray Serve of ours runs for this state dir."""


@dataclass
class RayTarget:
    """the Ray Serve (default: the one `textclf ray-serve` starts from this repository)"""

    state_dir: Path = option("where `textclf ray-serve` keeps state.json, key_file.json, serve-config.yaml and the "
                             "head's log", paths.ROOT / "runs" / "ray-serve")

    def __post_init__(self):
        self.state_dir = Path(self.state_dir).resolve()

    def state(self) -> dict:
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise NotRunning(f"no Ray Serve runs for {self.state_dir} (start one with `textclf ray-serve`)") from None
        if not _alive(state.get("pid")):
            raise NotRunning(f"the Ray head of {self.state_dir} is gone; `textclf ray-stop` cleans up, "
                             "`textclf ray-serve` starts a new one")
        return state


def _target() -> Any:
    return option("", default_factory=RayTarget)


@dataclass
class RayServeConfig:
    """start a local Ray head and the ingress (TorchServe's URLs) and wait until it is healthy"""

    host: str = option("address of the HTTP listener", "127.0.0.1")
    port: int = option("HTTP port of the inference API", 8000)
    token_auth: bool = option("require the inference key of <state-dir>/key_file.json as a bearer token, "
                              "as TorchServe does", True)
    start_timeout_s: float = option("seconds to wait for the head and the ingress", 180.0, flag="timeout")
    source: Path | None = option("also serve this bundle or .mar at once, with its archive's shape (one command from "
                                 "a file to a served model; `textclf ray-deploy` adds versions)", None)
    name: str | None = option("with --source: model name (default: the archive's)", None)
    version: str | None = option("with --source: model version (default: the archive's)", None)
    target: RayTarget = _target()

    def __post_init__(self):
        if self.source is None and (self.name or self.version):
            raise UserError("--name and --version name the model of --source; give --source too")
        check_int("--port", self.port, 1, error=UserError)
        if self.port > 65535:
            raise UserError(f"--port must be at most 65535, got {self.port}")
        if self.start_timeout_s <= 0:
            raise UserError("--timeout must be positive")


@dataclass
class RayDeployConfig:
    """serve a bundle or .mar as NAME VERSION (shape from its model-config.yaml); waits until its replicas run"""

    source: Path = option("a bundle directory or a .mar archive")
    name: str | None = option("model name clients use in URLs (default: the archive's)", None)
    version: str | None = option("model version (default: the archive's)", None)
    replicas: int | None = option("replicas (default: the archive's minWorkers, 1 for a bundle)", None)
    min_replicas: int | None = option("autoscale from this many replicas", None)
    max_replicas: int | None = option("autoscale up to this many replicas", None)
    threads: int | None = option("torch threads per replica (default: the handler's, cores // most replicas)", None)
    batch_size: int | None = option("requests per batch (default: the archive's batchSize)", None)
    batch_delay_ms: float | None = option("ms a batch waits to fill (default: the archive's maxBatchDelay)", None)
    default: bool = option("make it the version unversioned calls reach (the first version of a name always is)",
                           False)
    timeout_s: float = option("seconds to wait for its replicas", 300.0, flag="timeout")
    target: RayTarget = _target()

    def args(self) -> dict:
        keys = ("name", "version", "replicas", "min_replicas", "max_replicas", "threads", "batch_size", "batch_delay_ms")
        return {"source": str(Path(self.source).resolve()),
                **{k: getattr(self, k) for k in keys if getattr(self, k) is not None}}


@dataclass
class RayScaleConfig:
    """set a version's replicas (fixed, or autoscaling between --min-replicas and --max-replicas)"""

    name: str = option("model name")
    version: str = option("model version")
    replicas: int | None = option("replicas", None)
    min_replicas: int | None = option("autoscale from this many replicas", None)
    max_replicas: int | None = option("autoscale up to this many replicas", None)
    timeout_s: float = option("seconds to wait for the replicas", 300.0, flag="timeout")
    target: RayTarget = _target()

    def __post_init__(self):
        if (self.replicas is None) == (self.min_replicas is None and self.max_replicas is None):
            raise UserError("give --replicas, or --min-replicas/--max-replicas (exactly one of the two)")


@dataclass
class RaySetDefaultConfig:
    """make VERSION the one unversioned requests reach (roll forward or back; nothing dropped)"""

    name: str = option("model name")
    version: str = option("model version")
    target: RayTarget = _target()


@dataclass
class RayUndeployConfig(RaySetDefaultConfig):
    """stop serving one version (not the default of a name with others); requests in flight finish first"""


@dataclass
class RayStatusConfig:
    """the routing table, each version's shape and replicas, the URL"""

    target: RayTarget = _target()


@dataclass
class RayStopConfig:
    """stop Ray Serve and its Ray head; nothing left running, state cleaned"""

    target: RayTarget = _target()


# ---- the head ------------------------------------------------------------------------------------------------------
def _alive(pid) -> bool:
    try:
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def write_key_file(path: Path) -> Path:
    """A key file in TorchServe's format (textclf.torchserve.keys), no expiry; the inference key is the token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {"management": {"key": secrets.token_urlsafe(24)}, "inference": {"key": secrets.token_urlsafe(24)},
            "API": {"key": secrets.token_urlsafe(24)}}
    return write_secret(path, json.dumps(keys))


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def ray_auth_env(state_dir: Path) -> dict[str, str]:
    """The environment that makes a Ray process (the head, or a command connecting to it) use the cluster's token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(state_dir / RAY_TOKEN_FILE)}


def start_head(state_dir: Path, host: str, port: int, token_auth: bool, timeout_s: float) -> dict:
    """Start the head and Serve's controller and proxy on host:port with an ingress routing nothing yet; return the
    state. Raises UserError when one already runs or the port is taken, Failure when the head does not come up."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(NotRunning):
        RayTarget(state_dir).state()
        raise RayServeError(f"Ray Serve already runs for {state_dir} (`textclf ray-stop` first)")
    stop_head(state_dir)  # a dead head's leftovers
    if port_in_use(port, host if host not in ("0.0.0.0", "::") else "127.0.0.1"):
        raise RayServeError(f"port {port} is in use; pick another with --port")
    gcs, agent, client = free_ports(3)
    temp = tempfile.mkdtemp(prefix="textclf-ray-", dir="/tmp")  # /tmp: Ray's socket paths must stay short
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=false", f"--num-cpus={os.cpu_count() or 1}", f"--object-store-memory={OBJECT_STORE_BYTES}",
           f"--temp-dir={temp}", "--disable-usage-stats", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client}"]
    write_secret(state_dir / RAY_TOKEN_FILE, secrets.token_hex(32))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               **ray_auth_env(state_dir))
    with open(state_dir / HEAD_LOG, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own process group: stop_head ends all of it
    key_file = write_key_file(state_dir / KEY_FILE) if token_auth else None
    state = {"pid": proc.pid, "address": f"127.0.0.1:{gcs}", "temp_dir": temp, "state_dir": str(state_dir),
             "host": host, "port": port,
             "url": f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
             "key_file": str(key_file) if key_file else None,
             "config": {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port},
                        "applications": [{"name": INGRESS_APP, "route_prefix": "/", "import_path": INGRESS_IMPORT,
                                          "args": {}, "deployments": [{"name": INGRESS_DEPLOYMENT, "user_config":
                                          ingress_config({"key_file": key_file and str(key_file)})}]}]}}
    _save(state_dir, state)
    try:
        _wait_for_port(gcs, proc, timeout_s, state_dir)
        with connected(state):
            from ray.serve._private.api import serve_start  # Serve's controller client, as `serve deploy` uses it

            serve_start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
            apply(state, timeout_s)
        _wait_healthy(state, timeout_s)
    except BaseException:
        stop_head(state_dir)
        raise
    return state


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float, state_dir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"the Ray head exited with {proc.returncode}; {_tail(state_dir / HEAD_LOG)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise Failure(f"the Ray head did not listen within {timeout_s:g}s; {_tail(state_dir / HEAD_LOG)}")


def _wait_healthy(state: dict, timeout_s: float) -> None:
    key = read_keys(Path(state["key_file"])).inference if state["key_file"] else None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{state['url']}/ping", headers=bearer(key), timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"Ray Serve's /ping did not answer within {timeout_s:g}s at {state['url']}")
        time.sleep(0.25)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"{path} is missing"
    return f"last lines of {path}: " + " | ".join(text)


def head_alive(state_dir: Path) -> bool:
    try:
        return _alive(json.loads((Path(state_dir) / STATE_FILE).read_text()).get("pid"))
    except (OSError, ValueError):
        return False


def head_log_tail(state_dir: Path) -> str:
    return _tail(Path(state_dir) / HEAD_LOG)


def head_processes(state: dict) -> list[psutil.Process]:
    """The head's processes: its process group, and any process whose command line names its temp dir (Ray's
    workers name their session dir under it), which a worker that changed its group would still do."""
    found, pgid, temp = {}, state.get("pid"), state.get("temp_dir")
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (pgid and os.getpgid(proc.pid) == pgid) or (temp and any(temp in a for a in proc.info["cmdline"] or ())):
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    with contextlib.suppress(psutil.Error, TypeError):  # workers: the raylet's children, titled ray::..., own groups
        found.update({p.pid: p for p in psutil.Process(pgid).children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(state_dir: Path) -> bool:
    """Stop the head of this state dir (SIGTERM to its group: `ray start --block` stops its processes, then SIGKILL to
    whatever is left) and remove its temp dir and state; True if one was running. Never `ray stop`: it ends every
    Ray of this user on the machine."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    was_running = _alive(state.get("pid"))
    procs = head_processes(state)
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        os.killpg(state["pid"], signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
    for proc in alive + head_processes(state):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    if state.get("temp_dir", "").startswith("/tmp/textclf-ray-"):
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    for name in (STATE_FILE, CONFIG_FILE, KEY_FILE, RAY_TOKEN_FILE):
        (state_dir / name).unlink(missing_ok=True)
    return was_running


def _save(state_dir: Path, state: dict) -> None:
    write_atomically(state_dir / STATE_FILE, [json.dumps(state, indent=2)])
    write_atomically(state_dir / CONFIG_FILE, [yaml.safe_dump(state["config"], sort_keys=False).rstrip("\n")])


@contextlib.contextmanager
def connected(state: dict) -> Iterator[None]:
    import ray  # here: `textclf --help` and the unit tests need no Ray
    from ray._raylet import AuthenticationTokenLoader, Config

    # The cluster's token file lies next to state.json. Ray's core reads RAY_AUTH_MODE into its config when ray is
    # first imported (this module's imports already did) and keeps the first token it loads: re-reading both is what
    # Ray's own token setup does, and lets one process talk to two heads in turn (a test session, the benchmark).
    os.environ.update(ray_auth_env(Path(state["state_dir"])))
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    ray.init(address=state["address"], namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


# ---- the Serve config ----------------------------------------------------------------------------------------------
def _apps(state: dict) -> dict[str, dict]:
    return {a["name"]: a for a in state["config"]["applications"]}


def _ingress(state: dict) -> dict:
    """The ingress's user_config: in the config's `deployments` section, not in `args`, since Serve rebuilds (and
    restarts) an application whose args change but reconfigures running replicas for a changed user_config."""
    return _apps(state)[INGRESS_APP]["deployments"][0]["user_config"]


def apply(state: dict, timeout_s: float, wait_for: dict[str, int | None] | None = None) -> None:
    """Apply state["config"] (the whole Serve config) and wait until every application runs, the ones in `wait_for`
    with that many RUNNING replicas (None: at least one). Raises Failure naming a failed application."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = state["config"]
    serve_start().deploy_apps(ServeDeploySchema.model_validate(config))
    names, deadline = set(_apps(state)), time.monotonic() + timeout_s
    while True:
        status = serve.status()
        failed = {n: a.message for n, a in status.applications.items() if n in names and a.status == "DEPLOY_FAILED"}
        if failed:
            name, message = next(iter(failed.items()))
            raise Failure(f"{name} failed to deploy: {_last_line(message)}")
        if _settled(status, names, wait_for or {}):
            return
        if time.monotonic() > deadline:
            raise Failure(f"Serve applications not running within {timeout_s:g}s: "
                          f"{ {n: a.status for n, a in status.applications.items()} }")
        time.sleep(0.5)


def _settled(status, names: set[str], wait_for: dict[str, int | None]) -> bool:
    if set(status.applications) != names:  # removed ones gone, new ones there
        return False
    for name, app in status.applications.items():
        if app.status != "RUNNING":
            return False
        if name in wait_for:
            states = app.deployments[MODEL_DEPLOYMENT].replica_states
            running, total = states.get("RUNNING", 0), sum(states.values())
            want = wait_for[name]
            if (want is None and running < 1) or (want is not None and (running != want or total != want)):
                return False
    return True


def _last_line(message: str) -> str:
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _model_entry(state: dict, name: str, version: str) -> dict:
    app = _apps(state).get(app_name(name, version))
    if app is None:
        raise RayServeError(f"{name} {version} is not deployed (`textclf ray-status` lists what is)")
    return app


def _set_app(state: dict, app: dict | None, name: str) -> None:
    apps = [a for a in state["config"]["applications"] if a["name"] != name]
    state["config"]["applications"] = apps + ([app] if app else [])


def _set_routes(state: dict, models: dict) -> None:
    deployment = _apps(state)[INGRESS_APP]["deployments"][0]
    deployment["user_config"] = ingress_config(dict(deployment["user_config"], models=models))


# ---- the verbs -----------------------------------------------------------------------------------------------------
def _serve(c: RayServeConfig) -> Any:
    state = start_head(c.target.state_dir, c.host, c.port, c.token_auth, c.start_timeout_s)
    served = {}
    if c.source is not None:
        args = {"source": str(Path(c.source).resolve()),
                **{k: v for k, v in (("name", c.name), ("version", c.version)) if v is not None}}
        try:
            served = {"served": deploy(c.target.state_dir, args, timeout_s=c.start_timeout_s)}
        except BaseException:
            stop_head(c.target.state_dir)  # nothing half-started is left: the command starts all or nothing
            raise
    return {"status": "Ray Serve is running", "inference": state["url"], "key_file": state["key_file"],
            "state_dir": str(c.target.state_dir), "serve_config": str(c.target.state_dir / CONFIG_FILE),
            "head_log": str(c.target.state_dir / HEAD_LOG), **served}


def deploy(state_dir: Path, args: dict, make_default: bool = False, timeout_s: float = 300.0) -> dict:
    """Serve ModelShape.from_args(args) and route it; the first version of a name becomes its default."""
    target = RayTarget(state_dir)
    state = target.state()
    shape = ModelShape.from_args(args)  # checked here, at once, before the cluster builds it
    name = app_name(shape.name, shape.version)
    if name in _apps(state):
        raise RayServeError(f"{shape.name} {shape.version} is already deployed (`textclf ray-scale` changes its "
                            "replicas; a changed model is a new version)")
    with connected(state):
        # The replicas in the `deployments` section too: `textclf ray-scale` changes them there, without a restart.
        _set_app(state, {"name": name, "route_prefix": None, "import_path": MODEL_IMPORT,
                         "args": dict(args, name=shape.name, version=shape.version),
                         "deployments": [shape.scale_override()]}, name)
        try:
            apply(state, timeout_s, {name: shape.replicas})
        except Failure:
            _set_app(state, None, name)  # as a failed registration: nothing of it is left
            apply(state, timeout_s)
            raise
        _set_routes(state, with_version(_ingress(state)["models"], shape.name, shape.version, make_default))
        apply(state, timeout_s)
    _save(target.state_dir, state)
    routes = _ingress(state)["models"][shape.name]
    return {"status": f"{shape.name} {shape.version} deployed", "default": routes["default"], **shape.describe()}


def _deploy(c: RayDeployConfig) -> Any:
    return deploy(c.target.state_dir, c.args(), c.default, c.timeout_s)


def _scale(c: RayScaleConfig) -> Any:
    state = c.target.state()
    app = _model_entry(state, c.name, c.version)
    scale = ("replicas", "min_replicas", "max_replicas")
    args = {k: v for k, v in app["args"].items() if k not in scale}
    args.update({k: getattr(c, k) for k in scale if getattr(c, k) is not None})
    shape = ModelShape.from_args(args)  # checked; the args themselves stay (a change would restart the replicas)
    app["deployments"] = [shape.scale_override()]
    with connected(state):
        apply(state, c.timeout_s, {app["name"]: shape.replicas})
    _save(c.target.state_dir, state)
    return {"status": f"{c.name} {c.version} scaled", **shape.describe()}


def _set_default(c: RaySetDefaultConfig) -> Any:
    state = c.target.state()
    _set_routes(state, with_default(_ingress(state)["models"], c.name, c.version))
    with connected(state):
        apply(state, 120.0)
    _save(c.target.state_dir, state)
    return {"status": f"{c.name} {c.version} is the default version", "models": _ingress(state)["models"]}


def _undeploy(c: RayUndeployConfig) -> Any:
    state = c.target.state()
    _model_entry(state, c.name, c.version)
    # Unrouted first, so that no new request goes to it; then deleted: Serve lets its requests in flight finish.
    _set_routes(state, without_version(_ingress(state)["models"], c.name, c.version))
    with connected(state):
        apply(state, 120.0)
        _set_app(state, None, app_name(c.name, c.version))
        apply(state, 120.0)
    _save(c.target.state_dir, state)
    return {"status": f"{c.name} {c.version} undeployed", "models": _ingress(state)["models"]}


def status(state_dir: Path) -> dict:
    target = RayTarget(state_dir)
    state = target.state()
    with connected(state):
        from ray import serve

        live = serve.status().applications
    versions = {}
    for app in state["config"]["applications"]:
        if app["name"] == INGRESS_APP:
            continue
        shape = ModelShape.from_args(app["args"])
        running = live.get(app["name"])
        deployment = running.deployments.get(MODEL_DEPLOYMENT) if running else None
        versions[app["name"]] = {"name": shape.name, "version": shape.version,
                                 "status": running.status if running else "MISSING",
                                 "replica_states": dict(deployment.replica_states) if deployment else {},
                                 **shape.describe()}
    ingress = live.get(INGRESS_APP)
    return {"inference": state["url"], "token_auth": bool(state["key_file"]), "key_file": state["key_file"],
            "ingress": ingress.status if ingress else "MISSING", "models": _ingress(state)["models"],
            "versions": versions}


def _status(c: RayStatusConfig) -> Any:
    return status(c.target.state_dir)


def _stop(c: RayStopConfig) -> Any:
    was_running = stop_head(c.target.state_dir)
    return {"status": "Ray Serve stopped" if was_running else "Ray Serve was not running (stale state cleaned)"}


ACTIONS = {RayServeConfig: _serve, RayDeployConfig: _deploy, RayScaleConfig: _scale, RaySetDefaultConfig: _set_default,
           RayUndeployConfig: _undeploy, RayStatusConfig: _status, RayStopConfig: _stop}
# Named as `textclf` names them, so each verb's --help shows the command a user types.
VERBS = {"ray-serve": RayServeConfig, "ray-deploy": RayDeployConfig, "ray-scale": RayScaleConfig,
         "ray-set-default": RaySetDefaultConfig, "ray-undeploy": RayUndeployConfig, "ray-status": RayStatusConfig,
         "ray-stop": RayStopConfig}


def main(config) -> Any:
    return ACTIONS[type(config)](config)


def show(result: Any) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False)


def command(argv=None, prog="python -m textclf.rayserve.ops") -> int:
    return run(main, VERBS, argv, prog=prog, description=__doc__.split("\n\n")[0], show=show)


if __name__ == "__main__":
    sys.exit(command())
