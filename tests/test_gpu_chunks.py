"""bench.gpu_chunks runs where there is a GPU; these keep its code working without one."""
from __future__ import annotations

import pytest
import torch

from bench import gpu_chunks


def test_exits_3_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        gpu_chunks.main()
    assert stop.value.code == 3


def test_random_batches_are_right_padded():
    ids, mask = gpu_chunks.random_batch(5, torch.Generator().manual_seed(0))
    lengths = mask.sum(dim=1)
    assert ids.shape == mask.shape and int(lengths.max()) == ids.shape[1] and int(lengths.min()) >= 8
    assert torch.equal(mask, (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long())
    assert int((ids * (1 - mask)).abs().sum()) == 0
