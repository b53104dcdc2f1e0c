"""One real TorchServe for the whole live layer: free loopback ports, a temporary state dir and model
store, token authorization on. It is always stopped (process group killed if needed) at the end.

The store holds two versions of one tiny random RoBERTa classifier that are told apart by their
labels: v1 answers negative/positive, v2 negative/neutral/positive. v1 is registered once for the
session (1 worker, batch_size 8, max_batch_delay 50 ms); tests that add versions or workers put
the server back as they found it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tool_missing
from textclf.torchserve import properties, temporary

NAME = "clf"
V1_LABELS = {"negative", "positive"}
V2_LABELS = {"negative", "neutral", "positive"}


@dataclass
class LiveServer:
    cfg: properties.ServerConfig
    endpoints: properties.Endpoints
    rest: object  # textclf.torchserve.rest.TorchServeClient
    grpc: object  # textclf.torchserve.grpc_client.TorchServeGrpcClient
    store: Path

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    from textclf.torchserve.archive import ArchiveConfig, build_archive
    from training.tiny import make_tiny_bundle

    base = tmp_path_factory.mktemp("live-models")
    store = base / "store"
    try:
        for version, labels in (("1.0", sorted(V1_LABELS)), ("2.0", sorted(V2_LABELS))):
            bundle = make_tiny_bundle(base / f"bundle-{version}", labels=labels)
            # The archive plans the deployment the tests use: batches of up to 8 within 50 ms, up to 2 workers.
            build_archive(ArchiveConfig(bundle=bundle, name=NAME, version=version, store=store, batch_size=8,
                                        max_batch_delay=50, max_workers=2))
        yield store
    finally:
        shutil.rmtree(base, ignore_errors=True)  # no temporary model store outlives the session


@pytest.fixture(scope="session")
def live(model_store) -> LiveServer:
    if shutil.which("java") is None:
        tool_missing("java not installed: TorchServe needs a JRE 11+ (make java-check)")
    from textclf.torchserve.grpc_client import StubsMissing, generate_stubs, load_stubs

    try:
        load_stubs()
    except StubsMissing:
        generate_stubs()  # what `make grpc-stubs` does; textclf/torchserve/_proto is gitignored
    from textclf.torchserve.grpc_client import TorchServeGrpcClient

    # Stopped at the end of the session (SIGTERM via `torchserve --stop`, then SIGKILL to the group if needed).
    with temporary.temporary_server(model_store, prefix="ts-live-") as running:
        ep = running.endpoints
        rest = running.client(backoff_s=0.1)
        grpc = TorchServeGrpcClient(ep.grpc_inference, ep.grpc_management, ep.key_file, management_url=ep.management_url)
        rest.register(NAME, f"{NAME}-1.0.mar", initial_workers=1, batch_size=8, max_batch_delay=50)
        yield LiveServer(running.cfg, ep, rest, grpc, model_store)
        grpc.close()
