import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never touch the network: the hub path is exercised only through its error message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # Tiny models on 2 shared cores: one intra-op thread is ~50x faster than two contending ones.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "rt-polarity" / "train.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (present in CI and the dev sandbox, absent in a fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    from training.tiny import tiny_roberta

    return tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory) -> Path:
    from training.tiny import tiny_distilbert

    return tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))
