"""Operate a TorchServe: the command line behind the make serving targets.

    python -m tsclient.ops serve
    python -m tsclient.ops serve --config config.locked.properties --load-models classifier-1.0.mar
    python -m tsclient.ops register --name classifier --version 1.0 --workers 2
    python -m tsclient.ops predict --name classifier --text "What a wonderful day!"

Every verb reads the server's addresses from config.properties (or the derived config a test server
wrote into its state dir) and its keys from <state-dir>/key_file.json. Results are printed as JSON;
a refusal prints TorchServe's own message on one line and exits 1 (2 for a mistake in the arguments).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import requests

from tsclient import server
from tsclient.keys import KeyFileError
from tsclient.rest import TorchServeClient, TorchServeError
from tsclient.server import ServerConfig, ServerError

VERBS = ("serve", "stop", "register", "scale", "set-default", "unregister", "models", "predict", "health")


class OpsError(Exception):
    """A mistake in what was asked (missing archive, bad number); one line, exit code 2."""


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OpsError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _nonempty(name: str, value: Optional[str]) -> None:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise OpsError(f"{name} must be a non-empty string without '/', got {value!r}")


@dataclass
class Target:
    """Which server: its base config and its state dir (working directory, key_file.json, logs/)."""

    config: Path = server.DEFAULT_CONFIG
    state_dir: Path = server.ROOT

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


@dataclass
class ServeConfig:
    target: Target = field(default_factory=Target)
    start_timeout_s: float = 120.0
    # Replaces the config's load_models: comma-separated archives of the model store, loaded at start
    # (the first version listed of each model is its default). None: the config's own value.
    load_models: Optional[str] = None

    def __post_init__(self):
        if self.start_timeout_s <= 0:
            raise OpsError("start timeout must be positive")
        if self.load_models is not None:
            archives = [a.strip() for a in self.load_models.split(",") if a.strip()]
            bad = [a for a in archives if "/" in a or not a.endswith(".mar")]
            if not archives or bad:
                raise OpsError(f"load_models must list archive file names of the model store (x-1.0.mar,...), "
                               f"got {self.load_models!r}")
            self.load_models = ",".join(archives)


@dataclass
class StopConfig:
    target: Target = field(default_factory=Target)


@dataclass
class RegisterConfig:
    name: str
    version: str
    workers: int = 1
    batch_size: int = 32
    max_batch_delay: int = 1  # ms; a longer delay adds to every lone request and did not raise throughput
    target: Target = field(default_factory=Target)

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)
        _positive("workers", self.workers)
        _positive("batch size", self.batch_size)
        _positive("max batch delay", self.max_batch_delay, 0)

    @property
    def archive(self) -> str:
        return f"{self.name}-{self.version}.mar"


@dataclass
class ScaleConfig:
    name: str
    workers: int
    version: Optional[str] = None  # None: the default version
    target: Target = field(default_factory=Target)

    def __post_init__(self):
        _nonempty("name", self.name)
        if self.version is not None:
            _nonempty("version", self.version)
        _positive("workers", self.workers, 0)


@dataclass
class SetDefaultConfig:
    name: str
    version: str
    target: Target = field(default_factory=Target)

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)


@dataclass
class UnregisterConfig(SetDefaultConfig):
    pass


@dataclass
class ModelsConfig:
    name: Optional[str] = None  # None: list every model; else describe it
    version: Optional[str] = None  # with name: one version ("all" for every one); None: the default
    target: Target = field(default_factory=Target)

    def __post_init__(self):
        if self.name is not None:
            _nonempty("name", self.name)
        if self.version is not None:
            if self.name is None:
                raise OpsError("a version needs a model name")
            _nonempty("version", self.version)


@dataclass
class PredictConfig:
    name: str
    text: str
    version: Optional[str] = None  # None: the default version
    top_k: Optional[int] = None
    target: Target = field(default_factory=Target)

    def __post_init__(self):
        _nonempty("name", self.name)
        if self.version is not None:
            _nonempty("version", self.version)
        if not isinstance(self.text, str) or not self.text.strip():
            raise OpsError("text must not be empty")
        if self.top_k is not None:
            _positive("top_k", self.top_k)


@dataclass
class HealthConfig:
    target: Target = field(default_factory=Target)


def _serve(c: ServeConfig) -> Any:
    properties = {"load_models": c.load_models} if c.load_models else {}
    cfg = ServerConfig(config=c.target.config, state_dir=c.target.state_dir, start_timeout_s=c.start_timeout_s,
                       properties=properties)
    ep = server.start(cfg)
    return {"status": "TorchServe is running", "inference": ep.inference_url, "management": ep.management_url,
            "metrics": ep.metrics_url, "grpc_inference": ep.grpc_inference, "grpc_management": ep.grpc_management,
            "key_file": str(ep.key_file), "logs": str(cfg.state_dir / "logs"), "model_store": str(cfg.model_store)}


def _stop(c: StopConfig) -> Any:
    was_running = server.stop(ServerConfig(config=c.target.config, state_dir=c.target.state_dir))
    return {"status": "TorchServe stopped" if was_running else "TorchServe was not running (stale state cleaned)"}


def _register(c: RegisterConfig) -> Any:
    store = c.target.model_store()
    if not (store / c.archive).is_file():
        found = sorted(p.name for p in store.glob("*.mar")) if store.is_dir() else []
        raise OpsError(f"{store / c.archive} not found (archives in the store: {', '.join(found) or 'none'}); "
                       "build it with `make archive`")
    log_start = server.log_size(c.target.state_dir)
    try:
        # A bare file name: resolved inside the model store, so the config's allowed_urls never blocks it.
        return c.target.client().register(c.name, c.archive, initial_workers=c.workers, batch_size=c.batch_size,
                                          max_batch_delay=c.max_batch_delay, synchronous=True)
    except TorchServeError as e:
        raise _explained(e, c, store / c.archive, log_start) from None


def archive_problem(path: Path) -> Optional[str]:
    """Why `path` is not a readable model archive, or None. TorchServe only says "Failed to save model"."""
    try:
        with zipfile.ZipFile(path) as z:
            corrupt, names = z.testzip(), set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{path.name} is not a readable zip archive ({e}): truncated or corrupt; rebuild it with `make archive`"
    if corrupt is not None:
        return f"{path.name}: {corrupt} is corrupt (CRC mismatch); rebuild it with `make archive`"
    if "MAR-INF/MANIFEST.json" not in names:
        return f"{path.name} has no MAR-INF/MANIFEST.json: not built by torch-model-archiver (`make archive`)"
    return None


def _explained(e: TorchServeError, c: RegisterConfig, archive: Path, log_start: int) -> TorchServeError:
    """A failed registration (500, no reason given) with its reason: a broken archive or the worker's error.
    TorchServe has already unregistered the failed version and stopped its workers by then."""
    if e.status != 500:
        return e
    failed = re.search(r"model (\S+) version: (\S+)", e.message)
    name, version = failed.groups() if failed else (c.name, c.version)
    reason = archive_problem(archive) or server.worker_error(c.target.state_dir, name, version, since=log_start)
    return TorchServeError(e.status, f"{e.message.rstrip('.')}: {reason}", e.kind) if reason else e


def _scale(c: ScaleConfig, ready_timeout_s: float = 120.0) -> Any:
    client = c.target.client()
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


def _ready_workers(client, name: str, version: Optional[str]) -> int:
    (described,) = client.describe(name, version)
    return sum(w.get("status") == "READY" for w in described.get("workers", []))


def _set_default(c: SetDefaultConfig) -> Any:
    return c.target.client().set_default(c.name, c.version)


DRAIN_TIMEOUT_S = 30.0


def _unregister(c: UnregisterConfig) -> Any:
    client = c.target.client()
    _drain(client, c.name, c.version)
    return client.unregister(c.name, c.version)


def _drain(client: TorchServeClient, name: str, version: str) -> None:
    """Wait until nothing is queued for a version about to be unregistered. TorchServe 0.12 answers requests
    in flight on its workers with "Worker died." (the clients retry them on the default version) but never
    answers those still queued or waiting for their batch to fill: over gRPC they hang until the client's
    deadline. Once the version is not the default it gets no new unversioned requests and drains at once."""
    try:
        (default,) = client.describe(name)
        if default["modelVersion"] == version:
            return  # TorchServe refuses to unregister the default version; let it say so
        deadline, empty_polls = time.monotonic() + DRAIN_TIMEOUT_S, 0
        while empty_polls < 2 and time.monotonic() < deadline:
            (described,) = client.describe(name, version)
            empty_polls = empty_polls + 1 if described["jobQueueStatus"]["pendingRequests"] == 0 else 0
            time.sleep(0.05)
        # A batch leaves the queue when its first request is taken and reaches a worker up to maxBatchDelay later.
        time.sleep(described["maxBatchDelay"] / 1000 + 0.1)
    except (TorchServeError, KeyError, ValueError):
        return  # unknown model or version: unregister reports it


def _models(c: ModelsConfig) -> Any:
    client = c.target.client()
    return client.list_models() if c.name is None else client.describe(c.name, c.version)


def _predict(c: PredictConfig) -> Any:
    return c.target.client().predict(c.name, c.text, version=c.version, top_k=c.top_k)


def _health(c: HealthConfig) -> Any:
    return c.target.client().health()


ACTIONS = {ServeConfig: _serve, StopConfig: _stop, RegisterConfig: _register, ScaleConfig: _scale,
           SetDefaultConfig: _set_default, UnregisterConfig: _unregister, ModelsConfig: _models,
           PredictConfig: _predict, HealthConfig: _health}


def main(config) -> Any:
    """Run one verb; returns TorchServe's parsed answer. Raises OpsError, TorchServeError, ServerError."""
    return ACTIONS[type(config)](config)


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=server.DEFAULT_CONFIG, help="TorchServe config.properties (default: the repo's)")
    common.add_argument("--state-dir", type=Path, default=server.ROOT,
                        help="the server's working dir, where key_file.json and logs/ live (default: the repo root)")
    p = argparse.ArgumentParser(prog="python -m tsclient.ops", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    kw = dict(parents=[common])

    s = sub.add_parser("serve", help="start TorchServe and wait until it is healthy", **kw)
    s.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for /ping and for the workers of models loaded at start (default: 120)")
    s.add_argument("--load-models", help="archives of the model store to load at start, comma-separated "
                                          "(replaces the config's load_models; see config.locked.properties)")
    sub.add_parser("stop", help="stop TorchServe and clean its stale state", **kw)
    s = sub.add_parser("register", help="register <store>/<name>-<version>.mar with workers started", **kw)
    s.add_argument("--name", required=True, help="model name clients use in URLs")
    s.add_argument("--version", required=True, help="archive version, e.g. 1.0")
    s.add_argument("--workers", type=int, default=1, help="workers started before the call returns (default: 1)")
    s.add_argument("--batch-size", type=int, default=RegisterConfig.batch_size,
                   help=f"requests batched into one handler call (default: {RegisterConfig.batch_size})")
    s.add_argument("--max-batch-delay", type=int, default=RegisterConfig.max_batch_delay,
                   help=f"ms to wait for a batch to fill (default: {RegisterConfig.max_batch_delay})")
    s = sub.add_parser("scale", help="set a version's workers (min = max = --workers), synchronously", **kw)
    s.add_argument("--name", required=True, help="model name")
    s.add_argument("--version", help="version to scale (default: the default version)")
    s.add_argument("--workers", type=int, required=True, help="worker count; 0 stops all (requests then get 503)")
    for verb, what in (("set-default", "make VERSION the one unversioned requests reach"),
                       ("unregister", "remove one version (its workers stop)")):
        s = sub.add_parser(verb, help=what, **kw)
        s.add_argument("--name", required=True, help="model name")
        s.add_argument("--version", required=True, help="model version")
    s = sub.add_parser("models", help="list models, or describe one with --name", **kw)
    s.add_argument("--name", help="describe this model (default: list all)")
    s.add_argument("--version", help="with --name: this version, or 'all' (default: the default version)")
    s = sub.add_parser("predict", help="classify one text over REST and print the JSON answer", **kw)
    s.add_argument("--name", required=True, help="model name")
    s.add_argument("--text", required=True, help="the text to classify")
    s.add_argument("--version", help="version to call (default: the default version)")
    s.add_argument("--top-k", type=int, help="labels to return in scores (default: all)")
    sub.add_parser("health", help="TorchServe's /ping", **kw)

    a = p.parse_args(argv)
    target = Target(config=a.config, state_dir=a.state_dir)
    if a.verb == "serve":
        return ServeConfig(target, start_timeout_s=a.timeout, load_models=a.load_models)
    if a.verb == "stop":
        return StopConfig(target)
    if a.verb == "register":
        return RegisterConfig(a.name, a.version, a.workers, a.batch_size, a.max_batch_delay, target)
    if a.verb == "scale":
        return ScaleConfig(a.name, a.workers, a.version, target)
    if a.verb in ("set-default", "unregister"):
        return (SetDefaultConfig if a.verb == "set-default" else UnregisterConfig)(a.name, a.version, target)
    if a.verb == "models":
        return ModelsConfig(a.name, a.version, target)
    if a.verb == "predict":
        return PredictConfig(a.name, a.text, a.version, a.top_k, target)
    return HealthConfig(target)


def cli(argv=None) -> int:
    try:
        config = parse_args(argv)
        result = main(config)
    except OpsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TorchServeError, ServerError, KeyFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except requests.ConnectionError:
        print(f"error: cannot reach TorchServe at {config.target.endpoints().inference_url} / "
              f"{config.target.endpoints().management_url}: is it running? (`make serve`)", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
