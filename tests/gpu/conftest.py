"""The GPU layer (`make gpu-check`): the handler and TorchServe's GPU workers against the CPU path. Every test
here is marked `gpu` and skipped on hosts without CUDA, as tests/live is skipped without Java."""
import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="no CUDA device on this host")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if skip is not None:
                item.add_marker(skip)
