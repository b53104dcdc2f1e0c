"""tsclient.ops without a server: what `make scale` does around TorchServe's answer."""
from __future__ import annotations

import pytest

from tsclient import ops


class FakeClient:
    """Answers scale at once; describe reports READY workers one poll later each (as TorchServe can)."""

    def __init__(self, ready_after: list[int]):
        self.ready_after, self.scaled = list(ready_after), None

    def scale(self, name, version, min_workers, max_workers, synchronous):
        self.scaled = (name, version, min_workers, max_workers, synchronous)
        return {"status": "Processing worker updates..."}

    def describe(self, name, version):
        ready = self.ready_after.pop(0) if len(self.ready_after) > 1 else self.ready_after[0]
        return [{"workers": [{"status": "READY"}] * ready + [{"status": "UNLOADING"}]}]


def config_with(client, workers):
    target = ops.Target()
    target.client = lambda: client
    return ops.ScaleConfig("clf", workers, "1.0", target)


def test_scale_returns_once_every_worker_asked_for_is_ready():
    client = FakeClient([1, 1, 2])
    assert ops._scale(config_with(client, 2)) == {"status": "Processing worker updates..."}
    assert client.scaled == ("clf", "1.0", 2, 2, True) and client.ready_after == [2]


def test_scale_names_the_workers_that_never_became_ready():
    with pytest.raises(ops.OpsError, match=r"clf: 1 of 2 workers READY after 0 s; see logs/model_log.log"):
        ops._scale(config_with(FakeClient([1]), 2), ready_timeout_s=0.2)
