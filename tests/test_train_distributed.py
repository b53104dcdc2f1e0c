"""training.train under torchrun: two CPU processes (gloo) on a tiny random RoBERTa against one process
with the same global batch and seed. One run directory and report are written, run.json records the
world size, and the loss curve is the single process's.

Why the curves can match this closely: every process draws the same batches and takes its half of each
(split_batches), DDP averages the two halves' gradients, which equals the full batch's gradient, and
dropout is off in this model so no random mask differs between the runs. What is left is float
summation order: the tolerance is 1e-4 on losses around 0.69 (they agree to about 1e-7 here)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import texts_for
from textclf.torchserve.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, tiny_roberta_dir) -> Path:
    model = tmp_path_factory.mktemp("no-dropout") / "model"
    shutil.copytree(tiny_roberta_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp-data")
    # 32 training rows: 4 full batches of 8, so no process ever gets a short or padded batch.
    for offset, (split, counts) in enumerate({"train": {"pos": 16, "neg": 16}, "validation": {"pos": 4, "neg": 4},
                                              "test": {"pos": 4, "neg": 4}}.items()):
        texts_for(counts, offset=offset * 10_000).to_csv(folder / f"{split}.csv", index=False)
    return folder


def train(out: Path, data: Path, model: Path, nproc: int) -> subprocess.CompletedProcess:
    args = ["--data", str(data), "--model", str(model), "--output-dir", str(out), "--max-steps", "8",
            "--batch-size", "8", "--eval-batch-size", "8", "--max-length", "32", "--no-group-by-length",
            "--early-stopping-patience", "0", "--no-progress", "--precision", "fp32", "--learning-rate", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "training.train", *args]
    else:
        cmd = [str(TORCHRUN), "--nproc-per-node", str(nproc), "--master-port", str(free_ports(1)[0]),
               "-m", "training.train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def losses(out: Path) -> list[float]:
    state = json.loads((max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                        / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, no_dropout_model):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    base = tmp_path_factory.mktemp("ddp")
    results = {n: train(base / f"np{n}", data, no_dropout_model, n) for n in (1, 2)}
    for n, done in results.items():
        assert done.returncode == 0, f"{n} process(es) failed:\n{done.stderr[-3000:]}"
    return base, results


def test_two_processes_write_one_run_directory(runs):
    base, results = runs
    run = json.loads((base / "np2" / "run.json").read_text())
    assert run["world_size"] == 2 and json.loads((base / "np1" / "run.json").read_text())["world_size"] == 1
    assert run["batch"] == {"global": 8, "per_process": 4, "grad_accum": 1, "per_optimizer_step": 8}
    assert (base / "np2" / "metrics.json").is_file() and (base / "np2" / "report" / "report.json").is_file()
    # one process reports: the test headline is logged once, not once per process
    assert results[2].stderr.count("test: ") == 1


def test_loss_curve_matches_one_process_with_the_same_global_batch(runs):
    base, _ = runs
    one, two = losses(base / "np1"), losses(base / "np2")
    assert len(one) == len(two) >= 4
    assert one[0] != one[-1]  # it trained: the curve moves, so matching it means something
    assert max(abs(a - b) for a, b in zip(one, two, strict=False)) <= LOSS_TOLERANCE, (one, two)


def test_batch_must_split_evenly_over_the_processes(monkeypatch):
    from textclf.core.errors import UserError
    from training.train import TrainConfig

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="does not split evenly over 3 processes"):
        TrainConfig(output_dir="unused", batch_size=32)
    assert TrainConfig(output_dir="unused", batch_size=30, eval_batch_size=60).batch_size == 30
