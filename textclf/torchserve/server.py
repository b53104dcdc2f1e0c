"""Start and stop one TorchServe, keeping all of its state in one directory.

TorchServe's own CLI keeps a pid file in the system temp dir and writes key_file.json into its
working directory, so two servers on one host step on each other and a crashed server blocks
the next `--start`. Here every server gets a state dir (the repo root for `textclf serve`, a temp dir
in tests) that is its working directory and holds everything it writes:

    key_file.json                 the API keys (TorchServe writes it; textclf.torchserve.keys reads it)
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
import shutil
import signal
import subprocess
import sys
import time

import psutil
import requests

from textclf.torchserve.keys import KeyStore, bearer
from textclf.torchserve.ports import port_in_use
from textclf.torchserve.properties import (
    DERIVED_CONFIG,
    KEY_FILE,
    Endpoints,
    ServerConfig,
    ServerError,
    startup_archives,
)
from textclf.torchserve.server_logs import OUT_FILE, log_size, log_tail, worker_error

PID_FILE = "logs/torchserve.pid"
# Processes of ours, by role: the launcher (python -m ts.model_server), the JVM, the Python workers.
ROLES = {"launcher": "ts.model_server", "frontend": "org.pytorch.serve.ModelServer", "workers": "model_service_worker"}
_LAUNCHED: dict[int, subprocess.Popen] = {}  # launchers started by this process, reaped in stop()


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
        raise ServerError("java not found: TorchServe needs a JRE 11+ "
                          "(apt-get install openjdk-17-jre-headless; `make java-check` does it)")
    if not cfg.model_store.is_dir():
        raise ServerError(f"model store {cfg.model_store} does not exist; build an archive first (`textclf archive`)")
    pid = running_pid(cfg)
    if pid is not None:
        raise ServerError(f"TorchServe is already running for {cfg.state_dir} (process group {pid}); run `textclf stop` first")
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
                          f"(archives there: {', '.join(found) or 'none'}); build it with `textclf archive`")
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
