"""A throwaway TorchServe on free loopback ports: how tests, benchmarks and checks run a server of their own."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from textclf.core import paths
from textclf.torchserve.keys import read_keys
from textclf.torchserve.ports import free_port_overrides
from textclf.torchserve.properties import Endpoints, ServerConfig
from textclf.torchserve.rest import TorchServeClient
from textclf.torchserve.server import start, stop


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
        ep = self.endpoints
        return TorchServeClient(ep.inference_url, ep.management_url, ep.key_file, **options)

    def key(self, api: str = "inference") -> str:
        return read_keys(self.endpoints.key_file).key(api)


@contextmanager
def temporary_server(model_store: Path | None = None, *, config: Path = paths.SERVER_CONFIG,
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
