"""training.rundir: the run directory's names, what a finished run must hold, and the one-line errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from textclf.core.errors import UserError
from training.rundir import CALIBRATION_TEXTS, RunDir, RunDirError

LABELS = ["neg", "pos"]


def finished(path) -> RunDir:
    """A hand-made finished run: what training.train writes, minus the weights and the report."""
    run = RunDir(path)
    run.write_run({"labels": LABELS, "max_length": 64, "data": {"fingerprint": "f" * 64}})
    run.model_dir.mkdir(parents=True)
    run.model_config_file.write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    run.write_test(pd.DataFrame({"text": ["awful", "lovely"], "label": LABELS}))
    run.write_metrics({"test": {"accuracy": 1.0}})
    return run


def test_layout_names(tmp_path):
    run = RunDir(str(tmp_path))  # a str is accepted and kept as a Path
    assert run.path == tmp_path
    assert run.run_file == tmp_path / "run.json"
    assert run.model_dir == tmp_path / "model"
    assert run.model_config_file == tmp_path / "model" / "config.json"
    assert run.weights_file == tmp_path / "model" / "model.safetensors"
    assert run.metrics_file == tmp_path / "metrics.json"
    assert run.report_dir == tmp_path / "report"
    assert run.test_file == tmp_path / "data" / "test.parquet"
    assert run.calibration_file == tmp_path / "data" / "calibration.parquet"
    assert run.checkpoints_dir == tmp_path / "checkpoints"


def test_round_trip(tmp_path):
    run = finished(tmp_path)
    run.check_finished()
    assert run.read_run()["max_length"] == 64 and run.read_metrics() == {"test": {"accuracy": 1.0}}
    assert run.read_labels() == LABELS
    test = run.read_test()
    assert list(test.columns) == ["text", "label"] and test["text"].tolist() == ["awful", "lovely"]
    assert run.run_file.read_text().endswith("}\n")  # ends with a newline, like every JSON file we write


@pytest.mark.parametrize("remove", ["run.json", "model/config.json", "data/test.parquet", "metrics.json"])
def test_check_finished_names_the_missing_file(tmp_path, remove):
    run = finished(tmp_path / "run")
    (run.path / remove).unlink()
    with pytest.raises(RunDirError) as info:
        run.check_finished()
    message = str(info.value)
    assert message.startswith(f"{run.path / remove}: missing; is {run.path} a finished training run?")
    assert "\n" not in message


def test_an_arbitrary_folder_is_reported_as_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(RunDirError, match=r"run\.json: missing"):
        RunDir(tmp_path).check_finished()
    with pytest.raises(RunDirError, match=r"test\.parquet: missing"):
        RunDir(tmp_path).read_test()


def test_run_json_must_hold_what_readers_use(tmp_path):
    run = finished(tmp_path)
    run.write_run({"labels": LABELS})
    with pytest.raises(RunDirError, match=r"run\.json: missing 'max_length'"):
        run.read_run()
    run.run_file.write_text("{not json")
    with pytest.raises(RunDirError, match=r"run\.json: not valid JSON"):
        run.read_run()


def test_labels_must_agree_between_model_and_run_json(tmp_path):
    run = finished(tmp_path)
    run.write_run({"labels": ["pos", "neg"], "max_length": 64})
    with pytest.raises(RunDirError, match=r"config\.json: id2label disagrees with run\.json labels"):
        run.read_labels()
    run.model_config_file.write_text(json.dumps({"id2label": {}}))
    with pytest.raises(RunDirError, match="no id2label"):
        run.read_labels()


def test_calibration_texts_are_a_seeded_sample_of_train(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_calibration() is None  # a run trained before calibration texts were saved
    train = pd.DataFrame({"text": [f"text {i}" for i in range(1000)], "label": ["neg", "pos"] * 500})
    run.write_calibration(train, seed=13)
    texts = run.read_calibration()
    assert len(texts) == CALIBRATION_TEXTS and len(set(texts)) == len(texts) and set(texts) <= set(train["text"])
    assert texts != train["text"].tolist()[:CALIBRATION_TEXTS]  # sampled, not the head of the file
    RunDir(tmp_path / "again").write_calibration(train, seed=13)
    assert RunDir(tmp_path / "again").read_calibration() == texts
    RunDir(tmp_path / "small").write_calibration(train.head(3), seed=13)
    assert sorted(RunDir(tmp_path / "small").read_calibration()) == ["text 0", "text 1", "text 2"]


def test_run_dir_error_is_a_user_error():
    assert issubclass(RunDirError, UserError)  # exit code 2 and one line through textclf.core.options.run
