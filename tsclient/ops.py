"""Operate a TorchServe: the command line behind the make serving targets.

    python -m tsclient.ops serve
    python -m tsclient.ops serve --config config.locked.properties --load-models classifier-1.0.mar
    python -m tsclient.ops register --name classifier --version 1.0 --workers 2
    python -m tsclient.ops predict --name classifier --text "What a wonderful day!"

Every verb reads the server's addresses from config.properties (or the derived config a test server
wrote into its state dir) and its keys from <state-dir>/key_file.json. Results are printed as JSON;
a refusal prints TorchServe's own message on one line and exits 1 (2 for a mistake in the arguments).

The deployment shape comes from the archive (tsclient.archive): `register` and `scale` read its batch size,
batch delay and workers from its model-config.yaml, and refuse more workers than it plans (maxWorkers),
because each worker's threads were sized for that many.
"""
from __future__ import annotations

import json
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import yaml

from cli import UserError, check_int, option, run
from tsclient import server
from tsclient.archive import Plan, archive_problem, read_plan
from tsclient.rest import TorchServeClient, TorchServeError


class OpsError(UserError):
    """A mistake in what was asked (missing archive, bad number, more workers than planned)."""


def _nonempty(name: str, value: Optional[str], optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise OpsError(f"{name} must be a non-empty string without '/', got {value!r}")


@dataclass
class Target:
    """the server (default: the one `make serve` starts from this repository)"""

    config: Path = option("TorchServe config.properties", server.DEFAULT_CONFIG)
    state_dir: Path = option("the server's working dir, where key_file.json and logs/ live", server.ROOT)

    def __post_init__(self):
        self.config, self.state_dir = Path(self.config), Path(self.state_dir).resolve()
        if not self.config.is_file():
            raise OpsError(f"{self.config}: TorchServe config file not found")

    def properties(self) -> dict[str, str]:
        derived = self.state_dir / server.DERIVED_CONFIG  # written only while a server runs with overrides
        return server.read_properties(derived if derived.is_file() else self.config)

    def endpoints(self) -> server.Endpoints:
        return server.Endpoints.from_properties(self.properties(), self.state_dir)

    def model_store(self) -> Path:
        return (self.state_dir / self.properties().get("model_store", "model-archive/store")).resolve()

    def client(self) -> TorchServeClient:
        ep = self.endpoints()
        return TorchServeClient(ep.inference_url, ep.management_url, ep.key_file)


def _target() -> Any:
    return option("", default_factory=Target)


@dataclass
class ServeConfig:
    """start TorchServe and wait until it is healthy"""

    start_timeout_s: float = option("seconds to wait for /ping and for the workers of models loaded at start", 120.0,
                                    flag="timeout")
    load_models: Optional[str] = option("archives of the model store to load at start, comma-separated (replaces "
                                        "the config's load_models; see config.locked.properties)", None)
    target: Target = _target()

    def __post_init__(self):
        if self.start_timeout_s <= 0:
            raise OpsError("--timeout must be positive")
        if self.load_models is not None:
            archives = [a.strip() for a in self.load_models.split(",") if a.strip()]
            bad = [a for a in archives if "/" in a or not a.endswith(".mar")]
            if not archives or bad:
                raise OpsError(f"load_models must list archive file names of the model store (x-1.0.mar,...), "
                               f"got {self.load_models!r}")
            self.load_models = ",".join(archives)


@dataclass
class StopConfig:
    """stop TorchServe and clean its stale state"""

    target: Target = _target()


@dataclass
class RegisterConfig:
    """register <store>/<name>-<version>.mar as its archive plans it; returns once its workers are up"""

    name: str = option("model name clients use in URLs")
    version: str = option("archive version, e.g. 1.0")
    workers: Optional[int] = option("workers to start (default: the archive's minWorkers; at most its maxWorkers)",
                                    None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)
        check_int("--workers", self.workers, 1, optional=True)

    @property
    def archive(self) -> str:
        return f"{self.name}-{self.version}.mar"


@dataclass
class ScaleConfig:
    """set a version's workers (min = max = --workers, at most the archive's maxWorkers), synchronously"""

    name: str = option("model name")
    workers: int = option("worker count; 0 stops all (requests then get 503)")
    version: Optional[str] = option("version to scale (default: the default version)", None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version, optional=True)
        check_int("--workers", self.workers, 0)


@dataclass
class SetDefaultConfig:
    """make VERSION the one unversioned requests reach (roll forward or back)"""

    name: str = option("model name")
    version: str = option("model version")
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)


@dataclass
class UnregisterConfig(SetDefaultConfig):
    """remove one version once nothing is queued for it (its workers stop)"""


@dataclass
class ModelsConfig:
    """every model with all its versions, or with --name every version of one model in full"""

    name: Optional[str] = option("describe this model (default: list every model)", None)
    version: Optional[str] = option("with --name: one version, or 'all'", "all")
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name, optional=True)
        _nonempty("version", self.version, optional=True)


@dataclass
class PredictConfig:
    """classify one text over REST and print the JSON answer"""

    name: str = option("model name")
    text: str = option("the text to classify")
    version: Optional[str] = option("version to call (default: the default version)", None)
    top_k: Optional[int] = option("labels to return in scores (default: the archive's default-top-k)", None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version, optional=True)
        if not isinstance(self.text, str) or not self.text.strip():
            raise OpsError("text must not be empty")
        check_int("--top-k", self.top_k, 1, optional=True)


@dataclass
class HealthConfig:
    """TorchServe's /ping (with the inference key: with token authorization on, /ping needs it too)"""

    target: Target = _target()


def _serve(c: ServeConfig) -> Any:
    properties = {"load_models": c.load_models} if c.load_models else {}
    cfg = server.ServerConfig(config=c.target.config, state_dir=c.target.state_dir, start_timeout_s=c.start_timeout_s,
                       properties=properties)
    ep = server.start(cfg)
    return {"status": "TorchServe is running", "inference": ep.inference_url, "management": ep.management_url,
            "metrics": ep.metrics_url, "grpc_inference": ep.grpc_inference, "grpc_management": ep.grpc_management,
            "key_file": str(ep.key_file), "logs": str(cfg.state_dir / "logs"), "model_store": str(cfg.model_store)}


def _stop(c: StopConfig) -> Any:
    was_running = server.stop(server.ServerConfig(config=c.target.config, state_dir=c.target.state_dir))
    return {"status": "TorchServe stopped" if was_running else "TorchServe was not running (stale state cleaned)"}


def _register(c: RegisterConfig) -> Any:
    store = c.target.model_store()
    path = store / c.archive
    if not path.is_file():
        found = sorted(p.name for p in store.glob("*.mar")) if store.is_dir() else []
        raise OpsError(f"{path} not found (archives in the store: {', '.join(found) or 'none'}); "
                       "build it with `make archive`")
    problem = archive_problem(path)
    if problem:
        raise OpsError(problem)
    plan = _plan(path)
    workers = plan.min_workers if c.workers is None else c.workers
    _check_planned(workers, plan, c.archive)
    client, log_start = c.target.client(), server.log_size(c.target.state_dir)
    try:
        # A bare file name: resolved inside the model store, so the config's allowed_urls never blocks it.
        answer = client.register(c.name, c.archive, initial_workers=workers, batch_size=plan.batch_size,
                                 max_batch_delay=plan.max_batch_delay, response_timeout=plan.response_timeout,
                                 synchronous=True)
    except TorchServeError as e:
        raise _explained(e, c, log_start) from None
    if workers != plan.min_workers:  # TorchServe starts the archive's minWorkers whatever initial_workers says
        try:
            _scale(ScaleConfig(c.name, workers, c.version, target=c.target))
        except OpsError as e:
            raise OpsError(f"{c.name} {c.version} is registered with {plan.min_workers} worker(s), but scaling it to "
                           f"{workers} failed: {e}") from None
    return answer


def _plan(archive: Path) -> Plan:
    try:
        return read_plan(archive)
    except (ValueError, KeyError, yaml.YAMLError, zipfile.BadZipFile, OSError) as e:
        raise OpsError(f"{archive.name}: cannot read its model-config.yaml ({e}); rebuild it with `make archive`") from None


def _check_planned(workers: int, plan: Plan, archive: str) -> None:
    if plan.max_workers is not None and workers > plan.max_workers:
        raise OpsError(f"{archive} plans at most {plan.max_workers} worker(s), each with its share of the CPU "
                       f"cores as threads; {workers} would oversubscribe them. Rebuild it with "
                       f"`make archive ... ARGS=\"--max-workers {workers}\"` (a new version, or --force)")


def _explained(e: TorchServeError, c: RegisterConfig, log_start: int) -> TorchServeError:
    """A failed registration (500, no reason given) with its reason from the worker's log (the archive itself
    was checked readable before registering). TorchServe has already unregistered the failed version and
    stopped its workers by then."""
    if e.status != 500:
        return e
    failed = re.search(r"model (\S+) version: (\S+)", e.message)
    name, version = failed.groups() if failed else (c.name, c.version)
    reason = server.worker_error(c.target.state_dir, name, version, since=log_start)
    return TorchServeError(e.status, f"{e.message.rstrip('.')}: {reason}", e.kind) if reason else e


def _scale(c: ScaleConfig, ready_timeout_s: float = 120.0) -> Any:
    client = c.target.client()
    archive = _archive_of(client, c)
    if archive is not None:
        _check_planned(c.workers, _plan(archive), archive.name)
    answer = client.scale(c.name, c.version, min_workers=c.workers, max_workers=c.workers, synchronous=True)
    # A synchronous scale-up can answer a moment before its last worker reports READY (seen once in the
    # live tests); callers that go on to send traffic expect every worker they asked for to be serving.
    deadline = time.monotonic() + ready_timeout_s
    while (ready := _ready_workers(client, c.name, c.version)) != c.workers:
        if time.monotonic() > deadline:
            raise OpsError(f"{c.name}: {ready} of {c.workers} workers READY after {ready_timeout_s:.0f} s; "
                           "see logs/model_log.log")
        time.sleep(0.1)
    return answer


def _archive_of(client, c: ScaleConfig) -> Optional[Path]:
    """The store's archive of the version being scaled (a URL registration is saved under its file name);
    None if it is not there, and then no plan is checked."""
    (described,) = client.describe(c.name, c.version)
    path = c.target.model_store() / Path(urlparse(str(described.get("modelUrl", ""))).path).name
    return path if path.is_file() else None


def _ready_workers(client, name: str, version: Optional[str]) -> int:
    (described,) = client.describe(name, version)
    return sum(w.get("status") == "READY" for w in described.get("workers", []))


def _set_default(c: SetDefaultConfig) -> Any:
    return c.target.client().set_default(c.name, c.version)


def _unregister(c: UnregisterConfig) -> Any:
    return c.target.client().unregister(c.name, c.version)  # drains the version first (TorchServeClient.drain)


def _models(c: ModelsConfig) -> Any:
    client = c.target.client()
    if c.name is not None:
        return client.describe(c.name, c.version)
    return [_summary(client, m["modelName"]) for m in client.list_models()]


def _summary(client: TorchServeClient, name: str) -> dict:
    """One model with every version: TorchServe's own list names only the default version's archive."""
    (default,) = client.describe(name)
    versions = [{"version": d["modelVersion"], "archive": d.get("modelUrl"), "batchSize": d.get("batchSize"),
                 "maxBatchDelay": d.get("maxBatchDelay"),
                 "workers": sum(w.get("status") == "READY" for w in d.get("workers", [])),
                 "minWorkers": d.get("minWorkers"), "maxWorkers": d.get("maxWorkers")}
                for d in client.describe(name, "all")]
    return {"modelName": name, "defaultVersion": default["modelVersion"], "versions": versions}


def _predict(c: PredictConfig) -> Any:
    return c.target.client().predict(c.name, c.text, version=c.version, top_k=c.top_k)


def _health(c: HealthConfig) -> Any:
    return c.target.client().health()


ACTIONS = {ServeConfig: _serve, StopConfig: _stop, RegisterConfig: _register, ScaleConfig: _scale,
           SetDefaultConfig: _set_default, UnregisterConfig: _unregister, ModelsConfig: _models,
           PredictConfig: _predict, HealthConfig: _health}


VERBS = {"serve": ServeConfig, "stop": StopConfig, "register": RegisterConfig, "scale": ScaleConfig,
         "set-default": SetDefaultConfig, "unregister": UnregisterConfig, "models": ModelsConfig,
         "predict": PredictConfig, "health": HealthConfig}
LOCKED_HINT = ("the server runs in locked mode (model API off: config.locked.properties), so models cannot be "
               "registered, scaled or unregistered; `make stop serve` starts it in managed mode")


def main(config) -> Any:
    """Run one verb; returns TorchServe's parsed answer. Raises OpsError, TorchServeError, ServerError."""
    try:
        return ACTIONS[type(config)](config)
    except TorchServeError as e:
        if e.status == 405 and e.kind == "MethodNotAllowedException":
            raise TorchServeError(e.status, f"{e.message.rstrip('.')}: {LOCKED_HINT}", e.kind) from None
        raise


def cli(argv=None) -> int:
    return run(main, VERBS, argv, prog="python -m tsclient.ops", description=__doc__.split("\n\n")[0],
               show=lambda result: json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(cli())
