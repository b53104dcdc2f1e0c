"""The tiny training runs several test modules share: their data, their settings, and `shared_run`, which trains
each at most once per session. The fixtures over them (roberta_run, distilbert_run, roberta_trained,
distilbert_trained) are in tests/conftest.py, so no test module imports fixtures from another."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from training.tiny import CORPUS
from training.train import TrainConfig, main

# Insertion order pos, neg, mid: the run's labels must still come out sorted.
STRING_TRAIN = {"pos": 24, "neg": 14, "mid": 8}
STRING_LABELS = ["mid", "neg", "pos"]
# Integer labels: numeric order puts 2 before 10 (string order would not).
INT_TRAIN = {10: 12, 2: 10, 1: 8}
INT_LABELS = ["1", "2", "10"]


def texts_for(counts: dict, offset: int = 0) -> pd.DataFrame:
    """Distinct texts in the tiny tokenizer's vocabulary, `counts[label]` rows per label."""
    rows = [(f"{CORPUS[(i + j) % 8]} {offset + i * 100 + j}", label)
            for i, (label, n) in enumerate(counts.items()) for j in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"])


def write_string_data(folder: Path) -> Path:
    """train.csv + test.csv with string labels; validation is carved from train."""
    folder.mkdir(parents=True, exist_ok=True)
    texts_for(STRING_TRAIN).to_csv(folder / "train.csv", index=False)
    texts_for({"pos": 4, "neg": 4, "mid": 4}, offset=10_000).to_csv(folder / "test.csv", index=False)
    return folder


def write_int_data(folder: Path) -> Path:
    """train/validation/test JSONL with integer labels."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": INT_TRAIN, "validation": {10: 2, 2: 2, 1: 2}, "test": {10: 3, 2: 3, 1: 3}}
    for offset, (name, counts) in enumerate(splits.items()):
        texts_for(counts, offset=offset * 10_000).to_json(folder / f"{name}.jsonl", orient="records", lines=True)
    return folder


def roberta_config(out: Path, data: Path, model: Path, **overrides) -> TrainConfig:
    settings = dict(output_dir=str(out), data=str(data), model=str(model), max_steps=2, batch_size=8,
                    eval_batch_size=16, max_length=32, max_train_samples=30, class_weights="balanced",
                    progress=False)
    return TrainConfig(**{**settings, **overrides})


def _train_roberta(base: Path, model: Path) -> Path:
    main(roberta_config(base / "run", write_string_data(base / "data"), model))
    return base


def _train_distilbert(base: Path, model: Path) -> Path:
    # grad_accum=2 and no early stopping / length grouping: the other branches of build_trainer.
    main(TrainConfig(output_dir=str(base / "run"), data=str(write_int_data(base / "data")), model=str(model),
                     max_steps=2, batch_size=4, grad_accum=2, max_length=32, precision="fp32",
                     early_stopping_patience=0, group_by_length=False, progress=False))
    return base


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models gain nothing from two threads, and on two shared cores OpenMP threads spinning
    against another busy process made each forward pass ~50x slower than a single thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_RUNS: dict[str, Path] = {}
_BUILDERS = {"roberta": _train_roberta, "distilbert": _train_distilbert}


def shared_run(kind: str, tmp_path_factory, model_dir: Path) -> Path:
    """A folder holding data/ and run/ of one tiny training run, trained at most once per session."""
    if kind not in _RUNS:
        with one_torch_thread():  # session fixtures are set up before module-scoped ones
            _RUNS[kind] = _BUILDERS[kind](tmp_path_factory.mktemp(f"trained-{kind}"), model_dir)
    return _RUNS[kind]
