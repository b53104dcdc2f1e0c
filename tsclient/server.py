"""Start and stop one TorchServe, keeping all of its state in one directory.

TorchServe's own CLI keeps a pid file in the system temp dir and writes key_file.json into its
working directory, so two servers on one host step on each other and a crashed server blocks
the next `--start`. Here every server gets a state dir (the repo root for `make serve`, a temp dir
in tests) that is its working directory and holds everything it writes:

    key_file.json                 the API keys (TorchServe writes it; tsclient.keys reads it)
    logs/                         LOG_LOCATION and METRICS_LOCATION
    logs/torchserve.out           stdout/stderr of the launcher and the JVM
    logs/torchserve.pid           the process group of this server (ours, not TorchServe's)
    logs/ts-config.properties     the derived config when ports or properties are overridden
    logs/tmp/                     TMPDIR/TEMP: TorchServe's pid file, extracted .mar files and
                                  the worker sockets, so they cannot collide with another server

The launcher runs `--foreground` as the leader of a new process group; the JVM and the Python
workers inherit that group, so stop() can always end every process of this server, and only it.

Models listed in `load_models` (locked mode, config.locked.properties) are registered by TorchServe
before it answers /ping, but their workers load afterwards; start() returns only once every one of
them has its workers READY, and as soon as a worker fails to load its model, stops the server and
raises that worker's own error (from logs/model_log.log) instead of leaving TorchServe retrying it.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil
import requests

from cli import Failure
from tsclient.keys import KeyStore, bearer, read_keys

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config.properties"
# INFO instead of DEBUG, each line logged once, rotated files (see the file's header); None: TorchServe's own.
DEFAULT_LOG_CONFIG = ROOT / "log4j2.xml"
KEY_FILE = "key_file.json"
PID_FILE = "logs/torchserve.pid"
OUT_FILE = "logs/torchserve.out"
DERIVED_CONFIG = "logs/ts-config.properties"
# Processes of ours, by role: the launcher (python -m ts.model_server), the JVM, the Python workers.
ROLES = {"launcher": "ts.model_server", "frontend": "org.pytorch.serve.ModelServer", "workers": "model_service_worker"}
PORT_KEYS = {  # override name -> (property, whether the property holds a URL or a bare port)
    "inference": ("inference_address", "url"),
    "management": ("management_address", "url"),
    "metrics": ("metrics_address", "url"),
    "grpc_inference": ("grpc_inference_port", "port"),
    "grpc_management": ("grpc_management_port", "port"),
}
PORT_NAMES = tuple(PORT_KEYS)
_LAUNCHED: dict[int, subprocess.Popen] = {}  # launchers started by this process, reaped in stop()
DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc_inference": 7070, "grpc_management": 7071}


class ServerError(Failure):
    """TorchServe could not be started or stopped; the message says why in one line (plus log tail)."""


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blank lines skipped)."""
    props = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


@dataclass(frozen=True)
class Endpoints:
    """Where a running server answers, and where its keys are."""

    inference_url: str
    management_url: str
    metrics_url: str
    grpc_inference: str  # host:port
    grpc_management: str
    key_file: Path

    @classmethod
    def from_properties(cls, props: dict[str, str], state_dir: Path) -> "Endpoints":
        def url(key: str, port: int) -> str:
            return props.get(key, f"http://127.0.0.1:{port}").rstrip("/")

        def grpc(kind: str) -> str:
            host = props.get(f"grpc_{kind}_address", "127.0.0.1")
            return f"{host}:{props.get(f'grpc_{kind}_port', DEFAULT_PORTS['grpc_' + kind])}"

        return cls(url("inference_address", 8080), url("management_address", 8081), url("metrics_address", 8082),
                   grpc("inference"), grpc("management"), Path(state_dir) / KEY_FILE)

    def ports(self) -> dict[str, int]:
        return {
            "inference": int(self.inference_url.rsplit(":", 1)[1]),
            "management": int(self.management_url.rsplit(":", 1)[1]),
            "metrics": int(self.metrics_url.rsplit(":", 1)[1]),
            "grpc_inference": int(self.grpc_inference.rsplit(":", 1)[1]),
            "grpc_management": int(self.grpc_management.rsplit(":", 1)[1]),
        }


@dataclass
class ServerConfig:
    """One TorchServe instance: its base config, state dir, model store and any overrides."""

    config: Path = DEFAULT_CONFIG
    state_dir: Path = ROOT
    model_store: Path | None = None  # None: the config's model_store, relative to state_dir
    ports: dict[str, int] = field(default_factory=dict)  # keys of PORT_KEYS
    properties: dict[str, str] = field(default_factory=dict)  # any other property to override
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    log_config: Path | None = DEFAULT_LOG_CONFIG

    def __post_init__(self):
        self.config, self.state_dir = Path(self.config), Path(self.state_dir).resolve()
        if not self.config.is_file():
            raise ServerError(f"{self.config}: TorchServe config file not found")
        if self.log_config is not None:
            self.log_config = Path(self.log_config).resolve()  # the JVM runs in state_dir
            if not self.log_config.is_file():
                raise ServerError(f"{self.log_config}: log4j2 configuration file not found")
        unknown = set(self.ports) - set(PORT_KEYS)
        if unknown:
            raise ServerError(f"unknown port override(s) {sorted(unknown)}; use {sorted(PORT_KEYS)}")
        for name, port in self.ports.items():
            if not 0 < int(port) < 65536:
                raise ServerError(f"port for {name} must be 1..65535, got {port}")
        if self.model_store is None:
            store = read_properties(self.config).get("model_store")
            if not store:
                raise ServerError(f"{self.config}: no model_store property and no model store given")
            self.model_store = self.state_dir / store
        self.model_store = Path(self.model_store).resolve()
        if self.start_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ServerError("timeouts must be positive")

    @property
    def derived(self) -> bool:
        return bool(self.ports or self.properties)

    def effective_config(self) -> Path:
        return self.state_dir / DERIVED_CONFIG if self.derived else self.config.resolve()

    def effective_properties(self) -> dict[str, str]:
        props = read_properties(self.config)
        props.update(self._overrides())
        return props

    def endpoints(self) -> Endpoints:
        return Endpoints.from_properties(self.effective_properties(), self.state_dir)

    def _overrides(self) -> dict[str, str]:
        out = dict(self.properties)
        for name, port in self.ports.items():
            key, kind = PORT_KEYS[name]
            out[key] = f"http://127.0.0.1:{port}" if kind == "url" else str(port)
        if self.derived:
            out["model_store"] = str(self.model_store)
            # A derived config lives in state_dir/logs and the JVM runs in state_dir: a metrics_config relative
            # to the base config's folder would no longer be found, so it is made absolute.
            metrics = read_properties(self.config).get("metrics_config")
            if metrics and not Path(metrics).is_absolute():
                out.setdefault("metrics_config", str(self.config.resolve().parent / metrics))
        return out

    def write_effective_config(self) -> Path:
        """Copy the base config, replacing overridden properties in place (comments kept)."""
        if not self.derived:
            return self.effective_config()
        overrides, lines = self._overrides(), []
        for line in self.config.read_text(encoding="utf-8").splitlines():
            key = line.split("=", 1)[0].strip()
            if "=" in line and not line.lstrip().startswith("#") and key in overrides:
                line = f"{key}={overrides.pop(key)}"
            lines.append(line)
        lines += ["", "# Overrides written by tsclient.server"] + [f"{k}={v}" for k, v in overrides.items()]
        path = self.effective_config()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def _environment(cfg: ServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    tmp = cfg.state_dir / "logs" / "tmp"
    logs = cfg.state_dir / "logs"
    # TMPDIR moves TorchServe's pid file; TEMP becomes the JVM's java.io.tmpdir (extracted models,
    # worker sockets). TS_CONFIG_FILE would silently win over --ts-config, so it is dropped.
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs))
    env.pop("TS_CONFIG_FILE", None)
    return env


def processes(pgid: int | None) -> dict[str, list[psutil.Process]]:
    """The processes of ours in process group `pgid`, by role (ROLES); the one scan of the process table."""
    found: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    if pgid is None:
        return found
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(proc.info["pid"]) != pgid:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            role = next((role for role, marker in ROLES.items() if marker in cmdline), None)
            if role is not None:
                found[role].append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def _group_alive(pgid: int) -> bool:
    """True while any process of ours is left in the group."""
    return any(processes(pgid).values())


TS_PID_FILE = "logs/tmp/.model_server.pid"  # TorchServe's own, moved here by TMPDIR; holds the JVM's pid


def _read_pid(cfg: ServerConfig) -> int | None:
    """Our process group; failing that (pid file deleted by hand), the group of TorchServe's JVM."""
    for name, is_jvm in ((PID_FILE, False), (TS_PID_FILE, True)):
        try:
            pid = int((cfg.state_dir / name).read_text().strip())
            return os.getpgid(pid) if is_jvm else pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
    return None


def _clear_state(cfg: ServerConfig) -> None:
    """Files a dead server leaves behind; none of them may block or confuse the next start."""
    for path in (cfg.state_dir / PID_FILE, cfg.state_dir / KEY_FILE, cfg.state_dir / TS_PID_FILE):
        path.unlink(missing_ok=True)
    shutil.rmtree(cfg.state_dir / "logs/tmp/models", ignore_errors=True)


def log_tail(cfg: ServerConfig, lines: int = 25) -> str:
    """The last lines of the JVM log or the launcher output, whichever was written last."""
    paths = [p for p in (cfg.state_dir / "logs/ts_log.log", cfg.state_dir / OUT_FILE) if p.exists() and p.stat().st_size]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True):
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return f"last lines of {path}:\n" + "\n".join(tail)
    return "(no log output)"


MODEL_LOG = "logs/model_log.log"


def log_size(state_dir: Path) -> int:
    """Current size of the workers' log, so a later worker_error() reads only what was written after."""
    try:
        return (Path(state_dir) / MODEL_LOG).stat().st_size
    except FileNotFoundError:
        return 0


def worker_error(state_dir: Path, name: str | None = None, version: str | None = None, since: int = 0) -> str | None:
    """The last exception line a worker of `name`/`version` (any, if None) logged after byte `since`.

    TorchServe answers a registration whose workers fail with a bare "Failed to start workers"; the
    reason (e.g. the handler's BundleError) is only in the workers' log. It never holds request text:
    the handler does not log any."""
    try:
        with open(Path(state_dir) / MODEL_LOG, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - (4 << 20)))  # the last 4 MiB at most
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    worker = rf"W-\d+-{re.escape(name)}_{re.escape(version or '')}" if name else r"W-\d+-\S+"
    if name and version is None:
        worker += r"\S*"
    pattern = re.compile(rf"{worker}-stdout MODEL_LOG - ((?:[\w.]+\.)?\w+(?:Error|Exception): .*)$", re.M)
    found = pattern.findall(text)
    return found[-1].strip() if found else None


def startup_archives(props: dict[str, str]) -> list[str]:
    """Archive file names of `load_models` (entries may be `name=file.mar`); ["ALL"] for the whole store."""
    entries = [e.strip() for e in props.get("load_models", "").split(",") if e.strip()]
    return [e.split("=", 1)[-1].strip() for e in entries]


def auth_headers(endpoints: Endpoints, api: str) -> dict[str, str]:
    """The Authorization header for `api`, or none while there is no key file (token authorization off, or
    keys not written yet: then the server refuses, and callers retry)."""
    return bearer(KeyStore(endpoints.key_file).current(api))


def _models_ready(endpoints: Endpoints) -> bool:
    """Every registered version has at least minWorkers workers READY (with the management key)."""
    headers = auth_headers(endpoints, "management")
    try:
        models = requests.get(f"{endpoints.management_url}/models", params={"limit": 1000}, headers=headers,
                              timeout=5).json()["models"]
        for model in models:
            for d in requests.get(f"{endpoints.management_url}/models/{model['modelName']}/all", headers=headers,
                                  timeout=5).json():
                if sum(w["status"] == "READY" for w in d["workers"]) < max(1, d["minWorkers"]):
                    return False
        return True
    except (ValueError, KeyError, TypeError, requests.RequestException):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on the port. SO_REUSEADDR, as the JVM sets it, so that connections of a
    server stopped a moment ago (TIME_WAIT) do not count as in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free right now (held together so they are distinct)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_overrides() -> dict[str, int]:
    """A free loopback port for every listener (ServerConfig.ports), for a server next to others."""
    return dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))


def running_pid(cfg: ServerConfig) -> int | None:
    """Process group of the server of this state dir if it is still alive, else None."""
    pid = _read_pid(cfg)
    return pid if pid is not None and _group_alive(pid) else None


def _healthy(endpoints: Endpoints) -> bool:
    # With token authorization on, even /ping needs the inference key (0.12 answers 400 without it).
    try:
        r = requests.get(f"{endpoints.inference_url}/ping", timeout=2, headers=auth_headers(endpoints, "inference"))
        return r.status_code == 200 and r.json().get("status") == "Healthy"
    except (requests.RequestException, ValueError):
        return False


def start(cfg: ServerConfig) -> Endpoints:
    """Start TorchServe detached, wait until /ping answers Healthy; raise ServerError with the log tail if not."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServerError("java not found: TorchServe needs a JRE 11+ (run `make java-check`)")
    if not cfg.model_store.is_dir():
        raise ServerError(f"model store {cfg.model_store} does not exist; build an archive first (`make archive`)")
    pid = running_pid(cfg)
    if pid is not None:
        raise ServerError(f"TorchServe is already running for {cfg.state_dir} (process group {pid}); run `make stop` first")
    _clear_state(cfg)
    endpoints = cfg.endpoints()
    busy = [f"{name} port {port}" for name, port in endpoints.ports().items() if port_in_use(port)]
    if busy:
        raise ServerError(f"cannot start TorchServe: {', '.join(busy)} already in use by another process")
    (cfg.state_dir / "logs/tmp").mkdir(parents=True, exist_ok=True)
    if not cfg.derived:  # a derived config left by an earlier run would mislead clients about the ports
        (cfg.state_dir / DERIVED_CONFIG).unlink(missing_ok=True)
    archives = startup_archives(cfg.effective_properties())
    missing = [a for a in archives if a.upper() != "ALL" and "://" not in a and not (cfg.model_store / a).is_file()]
    if missing:  # TorchServe would only log a warning and serve without them
        found = sorted(p.name for p in cfg.model_store.glob("*.mar"))
        raise ServerError(f"load_models lists {', '.join(missing)}, not in the model store {cfg.model_store} "
                          f"(archives there: {', '.join(found) or 'none'}); build it with `make archive`")
    config_path = cfg.write_effective_config()
    log_start = log_size(cfg.state_dir)
    cmd = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
           "--ts-config", str(config_path), "--model-store", str(cfg.model_store)]
    if cfg.log_config is not None:
        cmd += ["--log-config", str(cfg.log_config)]
    with open(cfg.state_dir / OUT_FILE, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cfg.state_dir, env=_environment(cfg), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _LAUNCHED[proc.pid] = proc
    (cfg.state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _kill_group(proc.pid)
            _clear_state(cfg)
            raise ServerError(f"TorchServe exited during start-up (code {proc.returncode}); {log_tail(cfg)}")
        if _healthy(endpoints):
            if not archives or _models_ready(endpoints):
                return endpoints
            # TorchServe would retry a worker that cannot load its model forever: fail now, with its reason.
            reason = worker_error(cfg.state_dir, since=log_start)
            if reason:
                _kill_group(proc.pid)
                _clear_state(cfg)
                raise ServerError(f"a model of load_models cannot be loaded; its worker failed with: {reason}")
        time.sleep(0.5)
    _kill_group(proc.pid)
    _clear_state(cfg)
    raise ServerError(f"TorchServe did not answer /ping Healthy (and, with load_models, get every worker READY) "
                      f"within {cfg.start_timeout_s:.0f}s; {log_tail(cfg)}")


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(pgid)


def _reap(pgid: int) -> None:
    proc = _LAUNCHED.pop(pgid, None)
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop(cfg: ServerConfig) -> bool:
    """Stop the server of this state dir; True if one was running. Always leaves no process or stale file."""
    pgid = _read_pid(cfg)
    was_running = pgid is not None and _group_alive(pgid)
    if was_running:
        # The documented way: SIGTERM to the JVM, which stops its workers and deletes key_file.json.
        try:
            subprocess.run([sys.executable, "-m", "ts.model_server", "--stop"], cwd=cfg.state_dir,
                           env=_environment(cfg), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=cfg.stop_timeout_s)
        except subprocess.TimeoutExpired:
            pass  # the group is killed below
        deadline = time.monotonic() + cfg.stop_timeout_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _group_alive(pgid):
            _kill_group(pgid)  # a worker stuck in inference must not keep the ports
            time.sleep(0.5)
    if pgid is not None:
        _reap(pgid)
    _clear_state(cfg)
    return was_running


@dataclass
class Running:
    """A started server: its config, where it answers, and its model store."""

    cfg: ServerConfig
    endpoints: Endpoints
    store: Path

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    def client(self, **options):
        """A REST client for this server (options: TorchServeClient's timeout, retries, backoff_s)."""
        from tsclient.rest import TorchServeClient

        ep = self.endpoints
        return TorchServeClient(ep.inference_url, ep.management_url, ep.key_file, **options)

    def key(self, api: str = "inference") -> str:
        return read_keys(self.endpoints.key_file).key(api)


@contextmanager
def temporary_server(model_store: Path | None = None, *, config: Path = DEFAULT_CONFIG,
                     properties: dict[str, str] | None = None, prefix: str = "torchserve-") -> Iterator[Running]:
    """A TorchServe on free loopback ports with a temporary state dir (and model store, unless one is given),
    token authorization on as in `config`. Always stopped, its process group killed if needed, and its
    temporary files removed: the one way tests, benchmarks and checks run a server of their own."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    store = Path(model_store) if model_store is not None else base / "store"
    store.mkdir(parents=True, exist_ok=True)
    (base / "state").mkdir()
    cfg = ServerConfig(config=config, state_dir=base / "state", model_store=store, properties=dict(properties or {}),
                       ports=free_port_overrides())
    try:
        yield Running(cfg, start(cfg), store)
    finally:
        stop(cfg)
        shutil.rmtree(base, ignore_errors=True)
