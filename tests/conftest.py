from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests never touch the network: the hub path is exercised only through its error message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = ROOT.parent / "shared" / "data"


def tool_missing(reason: str) -> NoReturn:
    """A program the tests need (kubectl, nginx, java) is not installed: skip with the reason, or fail under
    CI=true, where `make test` installs it first (scripts/ensure_test_tools.sh, scripts/ensure_java.sh) and a
    skip would hide a broken install."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing test tool is an error)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    # Tiny models on 2 shared cores: one intra-op thread is ~50x faster than two contending ones.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "rt-polarity" / "train.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}: tests that read ../shared/data skip in a fresh clone")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    from training.tiny import tiny_roberta

    return tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory) -> Path:
    from training.tiny import tiny_distilbert

    return tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


# The tiny training runs that test_train, test_export, test_onnx_build and test_distill share (tests/tiny_runs.py),
# each trained at most once per session: `*_trained` is the folder holding data/ and run/, `*_run` its run/.
@pytest.fixture(scope="session")
def roberta_trained(tmp_path_factory, tiny_roberta_dir) -> Path:
    from tests.tiny_runs import shared_run

    return shared_run("roberta", tmp_path_factory, tiny_roberta_dir)


@pytest.fixture(scope="session")
def distilbert_trained(tmp_path_factory, tiny_distilbert_dir) -> Path:
    from tests.tiny_runs import shared_run

    return shared_run("distilbert", tmp_path_factory, tiny_distilbert_dir)


@pytest.fixture(scope="session")
def roberta_run(roberta_trained) -> Path:
    return roberta_trained / "run"


@pytest.fixture(scope="session")
def distilbert_run(distilbert_trained) -> Path:
    return distilbert_trained / "run"


PT2_LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="session")
def pt2_tiny_bundles(tmp_path_factory) -> dict[str, Path]:
    """One tiny model as a model.pt2 (AOTInductor, ~15 s of compiling: built once per session, for tests/test_pt2.py
    and tests/live/test_pt2.py) and as the model.pt it must answer like, by runtime."""
    from training.tiny import make_tiny_bundle

    root = tmp_path_factory.mktemp("pt2-tiny")
    return {runtime: make_tiny_bundle(root / runtime, labels=PT2_LABELS, runtime=runtime)
            for runtime in ("aotinductor", "torchscript")}
