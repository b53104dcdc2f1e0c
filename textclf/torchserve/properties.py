"""A TorchServe's configuration: its properties file, the overrides a server of ours adds (ports, model store),
and where it then answers (Endpoints). Pure reading and writing of files; starting and stopping is server.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textclf.core import paths
from textclf.core.errors import Failure

KEY_FILE = "key_file.json"
DERIVED_CONFIG = "logs/ts-config.properties"
PORT_KEYS = {  # override name -> (property, whether the property holds a URL or a bare port)
    "inference": ("inference_address", "url"),
    "management": ("management_address", "url"),
    "metrics": ("metrics_address", "url"),
    "grpc_inference": ("grpc_inference_port", "port"),
    "grpc_management": ("grpc_management_port", "port"),
}
PORT_NAMES = tuple(PORT_KEYS)
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
    def from_properties(cls, props: dict[str, str], state_dir: Path) -> Endpoints:
        def url(key: str, port: int) -> str:
            return props.get(key, f"http://127.0.0.1:{port}").rstrip("/")

        def grpc(kind: str) -> str:
            host = props.get(f"grpc_{kind}_address", "127.0.0.1")
            return f"{host}:{props.get(f'grpc_{kind}_port', DEFAULT_PORTS['grpc_' + kind])}"

        return cls(url("inference_address", DEFAULT_PORTS["inference"]), url("management_address", DEFAULT_PORTS["management"]),
                   url("metrics_address", DEFAULT_PORTS["metrics"]),
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

    config: Path = paths.SERVER_CONFIG
    state_dir: Path = paths.ROOT
    model_store: Path | None = None  # None: the config's model_store, relative to state_dir
    ports: dict[str, int] = field(default_factory=dict)  # keys of PORT_KEYS
    properties: dict[str, str] = field(default_factory=dict)  # any other property to override
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    log_config: Path | None = paths.LOG_CONFIG

    def __post_init__(self):
        self.config, self.state_dir = Path(self.config), Path(self.state_dir).resolve()
        if not self.config.is_file():
            raise ServerError(f"TorchServe config file {paths.missing(self.config)}")
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
        lines += ["", "# Overrides written by textclf.torchserve.server"] + [f"{k}={v}" for k, v in overrides.items()]
        path = self.effective_config()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def startup_archives(props: dict[str, str]) -> list[str]:
    """Archive file names of `load_models` (entries may be `name=file.mar`); ["ALL"] for the whole store."""
    entries = [e.strip() for e in props.get("load_models", "").split(",") if e.strip()]
    return [e.split("=", 1)[-1].strip() for e in entries]
