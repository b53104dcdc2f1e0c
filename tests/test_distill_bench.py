"""The distillation benchmark's own logic: part and dataset selection, skipped teacher rows, the table."""
from __future__ import annotations

import pytest

from bench import distill_bench
from bench.distill_bench import DistillBenchConfig
from cli import UserError


@pytest.fixture
def data_root(tmp_path):
    for name in ("rt-polarity", "banking77"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.csv").write_text("text,label\n")
    return tmp_path


def test_parts_and_datasets_are_checked(data_root):
    assert DistillBenchConfig(data_root=data_root, parts="b, a").part_list == ["b", "a"]
    with pytest.raises(UserError, match="--parts takes a,b,c,d"):
        DistillBenchConfig(data_root=data_root, parts="a,e")
    with pytest.raises(UserError, match="--parts takes"):
        DistillBenchConfig(data_root=data_root, datasets="imdb")
    with pytest.raises(UserError, match="benchmark data not found"):
        DistillBenchConfig(data_root=data_root / "nowhere")


def test_table_gives_speed_against_the_fine_tuned_minilm_and_says_why_rows_were_skipped(data_root):
    row = {"accuracy": 0.8, "macro_f1": 0.79, "train_seconds": 100, "train_samples_per_second": 50.0,
           "torchscript_texts_per_second": 100, "layers": 6}
    results = {"machine": {"isa": ["avx2"], "cpu": "test CPU", "cpus": 2},
               "rt-polarity": {"a": {**row, "onnx_texts_per_second": 120},
                               "b": {**row, "layers": 3, "accuracy": 0.79, "onnx_texts_per_second": 240},
                               "c": {"skipped": "teacher model not installed"}}}
    table = distill_bench.markdown(results, DistillBenchConfig(data_root=data_root))
    assert "| rt-polarity | b | 3-layer student of (a) | 3 | 79.00% |" in table and "| 2.00x |" in table
    assert "skipped: teacher model not installed" in table and "avx2 CPU" in table
