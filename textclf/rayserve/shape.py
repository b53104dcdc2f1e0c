"""What one model version runs as on Ray Serve, and which versions the ingress routes to. No Ray here: the commands
and the tests check a deployment before any cluster is asked.

One archive describes both servers: a .mar's model-config.yaml gives the defaults (batch size and delay, workers ->
replicas, the handler options and so the threads per replica), and the arguments of `model_app` override them.
A .mar is read by extracting it once into a cache directory named by its SHA-256 (written aside, renamed into
place in one step, so replicas starting together never see a half-extracted bundle).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from handlers.bundle import sha256_file
from handlers.config import HandlerConfig, HandlerConfigError
from textclf.core.errors import UserError
from textclf.torchserve.archive import NAME_PATTERN, archive_problem

MODEL_DEPLOYMENT = "model"  # the one deployment of each model version's application
INGRESS_APP = "textclf"  # the application of the ingress, on route prefix "/"
INGRESS_DEPLOYMENT = "ingress"
# Logical CPUs Ray reserves per replica: small, so that two replicas of two versions and the ingress fit a 2-core
# host; the torch threads of a replica (the handler's `threads`) are what it really uses. On a cluster where Ray
# should pack replicas by cores, pass num_cpus = threads.
REPLICA_CPUS = 0.25
INGRESS_CPUS = 0.1
CACHE_ENV = "TEXTCLF_RAY_CACHE"  # where .mar files are extracted (default ~/.cache/textclf/ray-bundles)
MAX_REQUEST_SIZE = 10485760  # bytes, TorchServe's max_request_size (config.properties)
MODEL_ARGS = {"source", "name", "version", "replicas", "min_replicas", "max_replicas", "threads", "batch_size",
              "batch_delay_ms", "handler", "num_cpus", "cache_dir"}


class RayServeError(UserError):
    """A deployment asked for something its source or the running services cannot do; one line, exit 2."""


def app_name(name: str, version: str) -> str:
    """The Serve application of one model version (its one deployment is MODEL_DEPLOYMENT): the archive's stem."""
    return f"{name}-{version}"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "textclf" / "ray-bundles")


def check_archive(path: Path) -> None:
    """RayServeError, in one line, unless `path` is an archive `textclf archive` built."""
    problem = archive_problem(path) if path.is_file() else f"{path}: no such archive"
    if problem:
        raise RayServeError(problem)


def extract_mar(path: Path, cache_dir: Path | None = None) -> Path:
    """The directory holding `path`'s files, as TorchServe unpacks it for a worker: <cache>/<sha256>, extracted
    once. Concurrent callers each extract aside and the first rename wins; the others drop their copy."""
    path, cache = Path(path), Path(cache_dir) if cache_dir else default_cache_dir()
    check_archive(path)
    target = cache / sha256_file(path)
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))  # hidden, same filesystem: rename is atomic
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                parts = PurePosixPath(member).parts
                if PurePosixPath(member).is_absolute() or ".." in parts:
                    raise RayServeError(f"{path.name}: member {member!r} would land outside the archive's directory")
            z.extractall(aside)
        try:
            os.rename(aside, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def archive_config(path: Path) -> tuple[dict, dict]:
    """(model-config.yaml, MAR-INF/MANIFEST.json) of a built archive; {} for what it lacks."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            config = yaml.safe_load(z.read("model-config.yaml")) if "model-config.yaml" in names else {}
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json")) if "MAR-INF/MANIFEST.json" in names else {}
    except (ValueError, KeyError, yaml.YAMLError, zipfile.BadZipFile, OSError) as e:
        raise RayServeError(f"{Path(path).name}: cannot read its model-config.yaml ({e}); rebuild it with "
                            "`textclf archive`") from None
    return config or {}, manifest or {}


def _positive(what: str, value, low: float = 1, number: type = int) -> None:
    kinds = (int, float) if number is float else (int,)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or value < low):
        raise RayServeError(f"{what} must be {'a number' if number is float else 'a whole number'} >= {low}, "
                            f"got {value!r}")


@dataclass(frozen=True)
class ModelShape:
    """One model version's deployment: built by `from_args`, passed to each replica as a plain dict."""

    source: str  # a bundle directory or a .mar file, as the replicas' nodes see it
    name: str
    version: str
    replicas: int | None  # fixed replicas; None: autoscaling between min_replicas and max_replicas
    min_replicas: int
    max_replicas: int
    batch_size: int
    batch_delay_ms: float
    model_yaml: dict = field(default_factory=dict)  # what the handler reads as its model-config.yaml
    num_cpus: float = REPLICA_CPUS
    cache_dir: str | None = None

    @classmethod
    def from_args(cls, args: dict) -> ModelShape:
        """The shape `model_app(args)` deploys; RayServeError for a mistake in `args` or the source."""
        args = dict(args or {})
        unknown = sorted(set(args) - MODEL_ARGS)
        if unknown:
            raise RayServeError(f"unknown model_app argument(s) {unknown}; allowed: {sorted(MODEL_ARGS)}")
        if not args.get("source"):
            raise RayServeError("model_app needs `source`: a bundle directory or a .mar file")
        source = Path(args["source"])
        if source.suffix == ".mar":
            check_archive(source)
            doc, manifest = archive_config(source)
            model = manifest.get("model", {})
            name, version = args.get("name") or model.get("modelName"), args.get("version") or model.get("modelVersion")
        elif source.is_dir():
            doc, name, version = {}, args.get("name"), args.get("version")
        else:
            raise RayServeError(f"{source}: neither a bundle directory nor a .mar file")
        for what, value in (("name", name), ("version", version)):
            if not isinstance(value, str) or not NAME_PATTERN.match(value):
                raise RayServeError(f"{what} {value!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . -")
        for key in ("replicas", "min_replicas", "max_replicas", "threads", "batch_size"):
            _positive(key, args.get(key))
        _positive("batch_delay_ms", args.get("batch_delay_ms"), 0, float)
        _positive("num_cpus", args.get("num_cpus"), 0, float)
        replicas, low, high = args.get("replicas"), args.get("min_replicas"), args.get("max_replicas")
        if replicas is not None and (low is not None or high is not None):
            raise RayServeError("give replicas, or min_replicas/max_replicas (autoscaling), not both")
        if low is None and high is None and replicas is None:
            replicas = int(doc.get("minWorkers", 1))  # what `textclf register` starts for this archive
        if replicas is None:
            low, high = low or 1, high or max(low or 1, int(doc.get("maxWorkers", 1)))
            if low > high:
                raise RayServeError(f"min_replicas {low} is more than max_replicas {high}")
        else:
            low = high = replicas
        handler = dict(doc.get("handler") or {}, **(args.get("handler") or {}))
        if args.get("threads") is not None:
            handler["threads"] = args["threads"]
        try:
            HandlerConfig.from_model_yaml({"handler": handler})
        except HandlerConfigError as e:
            raise RayServeError(str(e)) from None
        batch_size = int(args.get("batch_size") or doc.get("batchSize", 1))
        delay = args.get("batch_delay_ms")
        delay = float(doc.get("maxBatchDelay", 100) if delay is None else delay)
        # The handler splits the node's cores between the most workers it may share them with (its maxWorkers):
        # the archive's plan, or more if more replicas were asked for, so they never oversubscribe the cores.
        workers = max(high, int(doc.get("maxWorkers", doc.get("minWorkers", 1))))
        model_yaml = dict(doc, minWorkers=low, maxWorkers=workers, batchSize=batch_size, maxBatchDelay=delay,
                          handler=handler)
        return cls(source=str(source.resolve()), name=name, version=version, replicas=replicas, min_replicas=low,
                   max_replicas=high, batch_size=batch_size, batch_delay_ms=delay, model_yaml=model_yaml,
                   num_cpus=float(args.get("num_cpus") if args.get("num_cpus") is not None else REPLICA_CPUS),
                   cache_dir=args.get("cache_dir"))

    @classmethod
    def from_dict(cls, d: dict) -> ModelShape:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_archive(self) -> bool:
        return self.source.endswith(".mar")

    def model_dir(self) -> Path:
        """The directory the handler loads: the bundle itself, or the archive's extracted files."""
        if self.is_archive:
            return extract_mar(Path(self.source), Path(self.cache_dir) if self.cache_dir else None)
        return Path(self.source)

    def threads(self, cpu_count: int | None = None) -> int:
        """Torch threads per replica, as the handler computes them on a node with `cpu_count` cores."""
        return HandlerConfig.from_model_yaml(self.model_yaml).thread_count(self.model_yaml["maxWorkers"], cpu_count)

    def manifest(self) -> dict:
        return {"model": {"modelName": self.name, "modelVersion": self.version}}

    def deployment_options(self) -> dict:
        """The keyword arguments of the replica deployment's .options()."""
        scale = ({"num_replicas": self.replicas} if self.replicas is not None else
                 {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                         # a full batch in flight per replica before another is started
                                         "target_ongoing_requests": self.batch_size}})
        # Twice a batch, so that the next batch fills while one runs; beyond that requests wait in the router.
        return {"name": MODEL_DEPLOYMENT, "max_ongoing_requests": 2 * self.batch_size,
                "ray_actor_options": {"num_cpus": self.num_cpus}, **scale}

    def scale_override(self) -> dict:
        """The replicas as a Serve config's `deployments` entry: changing them there scales the running replicas."""
        if self.replicas is not None:
            return {"name": MODEL_DEPLOYMENT, "num_replicas": self.replicas}
        return {"name": MODEL_DEPLOYMENT, "num_replicas": "auto", "autoscaling_config":
                self.deployment_options()["autoscaling_config"]}

    def describe(self) -> dict:
        """The shape as `textclf ray-status` prints it."""
        scale = ({"replicas": self.replicas} if self.replicas is not None else
                 {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas})
        return {"source": self.source, **scale, "threads": self.threads(), "batch_size": self.batch_size,
                "batch_delay_ms": self.batch_delay_ms, "handler": self.model_yaml.get("handler", {})}


# ---- the routing table: {name: {"default": version, "versions": [version, ...]}} --------------------------------
def check_routes(models) -> dict:
    """A validated copy of the routing table; RayServeError naming what is wrong."""
    if models is None:
        return {}
    if not isinstance(models, dict):
        raise RayServeError(f"models must map each name to {{'default': version, 'versions': [...]}}, got {models!r}")
    out = {}
    for name, entry in models.items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise RayServeError(f"model name {name!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . -")
        versions = entry.get("versions") if isinstance(entry, dict) else None
        if not isinstance(versions, list) or not versions or not all(isinstance(v, str) for v in versions):
            raise RayServeError(f"model {name!r}: 'versions' must be a non-empty list of version strings")
        if len(set(versions)) != len(versions):
            raise RayServeError(f"model {name!r}: versions {versions} repeat one")
        default = entry.get("default", versions[0])
        if default not in versions:
            raise RayServeError(f"model {name!r}: default version {default!r} is not one of {versions}")
        out[name] = {"default": default, "versions": list(versions)}
    return out


def with_version(models: dict, name: str, version: str, make_default: bool = False) -> dict:
    """The table with `version` routed; the first version of a name becomes its default."""
    models = check_routes(models)
    entry = models.setdefault(name, {"default": version, "versions": []})
    if version not in entry["versions"]:
        entry["versions"].append(version)
    if make_default:
        entry["default"] = version
    return models


def with_default(models: dict, name: str, version: str) -> dict:
    models = check_routes(models)
    if version not in models.get(name, {}).get("versions", []):
        raise RayServeError(f"{name} {version} is not deployed (deployed: {_listing(models)})")
    models[name]["default"] = version
    return models


def without_version(models: dict, name: str, version: str) -> dict:
    """The table without `version`; refused for the default of a name that has other versions (set another
    default first: unversioned requests must always have somewhere to go)."""
    models = check_routes(models)
    entry = models.get(name)
    if entry is None or version not in entry["versions"]:
        raise RayServeError(f"{name} {version} is not deployed (deployed: {_listing(models)})")
    if entry["default"] == version and len(entry["versions"]) > 1:
        raise RayServeError(f"{name} {version} is the default version; make another one the default first "
                            "(`textclf ray-set-default`)")
    entry["versions"].remove(version)
    if not entry["versions"]:
        del models[name]
    return models


def _listing(models: dict) -> str:
    return ", ".join(f"{n} {v}" for n, e in models.items() for v in e["versions"]) or "none"
