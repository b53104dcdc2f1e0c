"""bench.gpu_check and bench.gpu_chunks run where there is a GPU; these keep their code working without one."""
from __future__ import annotations

import pytest
import torch

from bench import gpu_check, gpu_chunks
from tests.bundles import make_tiny_bundle


def test_both_exit_3_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main in (lambda: gpu_check.main(None), gpu_chunks.main):
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 3


def test_in_process_check_fails_when_the_handler_is_not_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # gpu_id 0 then falls back to the CPU
    bundle = make_tiny_bundle(tmp_path / "b", arch="distilbert")
    result = gpu_check.check_in_process("tiny", bundle, "fp32")
    assert result["handler_device"] == "cpu" and result["same_labels"] and result["max_score_diff"] == 0
    assert result["ok"] is False


def test_random_batches_are_right_padded():
    ids, mask = gpu_chunks.random_batch(5, torch.Generator().manual_seed(0))
    lengths = mask.sum(dim=1)
    assert ids.shape == mask.shape and int(lengths.max()) == ids.shape[1] and int(lengths.min()) >= 8
    assert torch.equal(mask, (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long())
    assert int((ids * (1 - mask)).abs().sum()) == 0
