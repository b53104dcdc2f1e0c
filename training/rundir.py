"""The run directory: what `training.train` writes and export, summary, the demo and the benchmarks read.

Layout (the names live here and nowhere else):
    run.json            config, labels, max_length, class weights, data source and fingerprint, versions
    model/              Hugging Face model (model.safetensors, config.json whose id2label holds the labels)
                        and tokenizer: the best checkpoint
    metrics.json        validation + test headline metrics, per-class results, training throughput
    report/             confusion_matrix.{csv,png}, misclassified.csv, report.json (test split)
    out_of_scope.npz    the out-of-scope detector fitted on the final model (training/out_of_scope.py; run.json's
                        `out_of_scope` says which, its threshold and why)
    data/test.parquet   the normalised test split (text, label), so export evaluates without the source
    data/calibration.parquet  a sample of training texts (text): static int8 quantisation calibrates on them
    checkpoints/        Trainer checkpoints (resumed from automatically)
    distill/            a distilled run only: student-init/ (the student built from teacher layers) and
                        teacher-logits-<data fingerprint>-<teacher weights hash>.npy (one teacher pass, reused)

metrics.json is written last: a run that has it finished. `RunDir(path)` names the paths and reads
them; every problem with a run directory raises RunDirError with a one-line message naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from handlers.bundle import OUT_OF_SCOPE_FILE, BundleError, labels_from_config
from textclf.core.errors import UserError

RUN_FILE = "run.json"
MODEL_DIR = "model"
MODEL_CONFIG_FILE = "config.json"  # inside model/
WEIGHTS_FILE = "model.safetensors"  # inside model/
METRICS_FILE = "metrics.json"
REPORT_DIR = "report"
TEST_FILE = "data/test.parquet"
CALIBRATION_FILE = "data/calibration.parquet"
CALIBRATION_TEXTS = 256  # a few hundred texts fix activation ranges; more only costs export memory
CHECKPOINTS_DIR = "checkpoints"
DISTILL_DIR = "distill"

# What readers rely on in run.json (serving needs both; export and the serving benchmark read them).
RUN_KEYS = ("labels", "max_length")


def _below(*parts: str) -> property:
    """A RunDir property: the path `parts` below the run directory."""
    return property(lambda self: self.path.joinpath(*parts))


class RunDirError(UserError):
    """The run directory is incomplete or unreadable; the message names the file and why."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------------------------------ paths

    run_file = _below(RUN_FILE)
    model_dir = _below(MODEL_DIR)
    model_config_file = _below(MODEL_DIR, MODEL_CONFIG_FILE)
    weights_file = _below(MODEL_DIR, WEIGHTS_FILE)
    metrics_file = _below(METRICS_FILE)
    report_dir = _below(REPORT_DIR)
    test_file = _below(TEST_FILE)
    calibration_file = _below(CALIBRATION_FILE)
    out_of_scope_file = _below(OUT_OF_SCOPE_FILE)
    checkpoints_dir = _below(CHECKPOINTS_DIR)
    student_init_dir = _below(DISTILL_DIR, "student-init")

    def teacher_logits_file(self, data_fingerprint: str, teacher_sha256: str, texts: str = "") -> Path:
        """`texts`: which texts beyond the training rows themselves, such as `noisy2-seed13`."""
        name = "-".join(filter(None, ("teacher-logits", data_fingerprint[:16], teacher_sha256[:16], texts)))
        return self.path / DISTILL_DIR / f"{name}.npy"

    # ------------------------------------------------------------------------------------------ reading

    def check_finished(self) -> None:
        """Raise RunDirError naming the first file a finished training run has and this one lacks."""
        # run.json first: an arbitrary folder then says it is no run, not that some inner file is missing.
        for needed in (self.run_file, self.model_config_file, self.test_file, self.metrics_file):
            if not needed.is_file():
                raise self._missing(needed)

    def read_run(self) -> dict:
        run = self._read_json(self.run_file)
        for key in RUN_KEYS:
            if key not in run:
                raise RunDirError(f"{self.run_file}: missing '{key}'; re-run training.train")
        return run

    def read_metrics(self) -> dict:
        return self._read_json(self.metrics_file)

    def read_labels(self) -> list[str]:
        """Label names in logit order from model/config.json, checked against run.json."""

        try:
            labels = labels_from_config(self._read_json(self.model_config_file), str(self.model_config_file))
        except BundleError as e:
            raise RunDirError(str(e)) from None
        if labels != self.read_run()["labels"]:
            raise RunDirError(f"{self.model_config_file}: id2label disagrees with {RUN_FILE} labels")
        return labels

    def read_test(self):
        """The saved test split: a DataFrame with `text` and `label` (the label name) columns."""
        import pandas as pd  # imported here: `textclf review` reads run folders without pandas

        if not self.test_file.is_file():
            raise self._missing(self.test_file)
        return pd.read_parquet(self.test_file)

    def read_calibration(self) -> list[str] | None:
        """Training texts for static quantisation; None for a run trained before they were saved."""
        import pandas as pd  # imported here: `textclf review` reads run folders without pandas

        if not self.calibration_file.is_file():
            return None
        return pd.read_parquet(self.calibration_file)["text"].tolist()

    # ------------------------------------------------------------------------------------------ writing

    def write_run(self, run: dict) -> None:
        _write_json(self.run_file, run)

    def write_metrics(self, metrics: dict) -> None:
        _write_json(self.metrics_file, metrics)

    def write_test(self, test) -> None:
        self.test_file.parent.mkdir(parents=True, exist_ok=True)
        test.to_parquet(self.test_file, index=False)

    def write_calibration(self, train, seed: int) -> None:
        """A seeded sample of training texts, never test ones: calibrating on the test split would leak it."""
        sample = train[["text"]].sample(n=min(CALIBRATION_TEXTS, len(train)), random_state=seed)
        self.calibration_file.parent.mkdir(parents=True, exist_ok=True)
        sample.to_parquet(self.calibration_file, index=False)

    def _missing(self, path: Path) -> RunDirError:
        return RunDirError(f"{path}: missing; is {self.path} a finished training run?")

    def _read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._missing(path) from None
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}: not valid JSON ({e})") from None


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
