"""What training writes to the terminal and to log files: no progress bars outside a terminal, metric lines with
numbers (not quoted strings) through logging, and the chatty ONNX loggers kept at WARNING by the one log set-up."""
from __future__ import annotations

import io
import json
import logging
import re
from types import SimpleNamespace

import pytest
from transformers import PrinterCallback, ProgressCallback

from tests.tiny_runs import one_torch_thread, roberta_config, write_string_data
from textclf.core import log as textclf_log
from training import train
from training.train import build_trainer, load_data, log_callbacks, metric_line, resolve_model, show_progress

LOGS = {"eval_loss": 0.51234567, "eval_accuracy": 0.966312, "eval_macro_f1": 0.95, "epoch": 1.5, "total_flos": 12345.0,
        "step_count": 40, "learning_rate": 5e-05}
QUOTED_NUMBER = re.compile(r"""['"]-?[0-9.]+(e-?[0-9]+)?['"]""")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr, progress, shown", [(Terminal(), True, True), (Terminal(), False, False),
                                                     (io.StringIO(), True, False), (None, True, False)],
                         ids=["terminal", "no-progress", "log-file", "no-stderr"])
def test_progress_bars_only_in_a_terminal(monkeypatch, tmp_path, stderr, progress, shown):
    monkeypatch.setattr(train.sys, "stderr", stderr)
    assert show_progress(roberta_config(tmp_path, tmp_path, tmp_path, progress=progress)) is shown


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_roberta_dir):
    base = tmp_path_factory.mktemp("output")
    config = roberta_config(base / "run", write_string_data(base / "data"), tiny_roberta_dir, progress=True,
                            class_weights="none", early_stopping_patience=0)
    return config, load_data(config), resolve_model(config.model)


def trainer_for(tiny):
    config, (splits, problem, weights), model_path = tiny
    return build_trainer(config, splits, model_path, problem, weights)[0]


def test_trainer_in_a_log_file_has_no_tqdm_and_logs_metric_lines(tiny, capsys, caplog):
    """pytest captures stderr (not a terminal): the run as a log file or pipe would see it."""
    trainer = trainer_for(tiny)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    metric_lines, progress_bar = log_callbacks()
    assert trainer.args.disable_tqdm and metric_lines in kinds
    assert not any(issubclass(k, (PrinterCallback, ProgressCallback)) for k in kinds)
    with caplog.at_level(logging.INFO, logger="training.train"), one_torch_thread():
        trainer.train()
    out, err = capsys.readouterr()
    assert out == "" and "it/s" not in err and "%|" not in err  # no printed dicts, no bars
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines and not any(QUOTED_NUMBER.search(line) for line in lines)
    assert any(isinstance(json.loads(line.split(": ", 1)[1]).get("loss"), float) for line in lines)


def test_trainer_in_a_terminal_keeps_its_bar_with_metric_lines(tiny, monkeypatch):
    monkeypatch.setattr(train.sys, "stderr", Terminal())
    trainer = trainer_for(tiny)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert not trainer.args.disable_tqdm and log_callbacks()[1] in kinds and ProgressCallback not in kinds
    assert PrinterCallback not in kinds


def test_metric_line_keeps_numbers_as_numbers():
    line = metric_line(40, LOGS)
    assert line.startswith("step 40: ") and not QUOTED_NUMBER.search(line)
    assert json.loads(line[len("step 40: "):]) == {"eval_loss": 0.5123, "eval_accuracy": 0.9663, "eval_macro_f1": 0.95,
                                                     "epoch": 1.5, "step_count": 40, "learning_rate": 5e-05}


@pytest.mark.parametrize("which", [0, 1], ids=["metric-lines", "progress-bar"])
def test_log_callbacks_log_through_logging_not_print(which, capsys, caplog):
    callback = log_callbacks()[which]()
    state = SimpleNamespace(is_world_process_zero=True, global_step=40, max_steps=100)
    if which:
        callback.on_train_begin(None, state, None)
    with caplog.at_level(logging.INFO, logger="training.train"):
        callback.on_log(None, state, None, logs=dict(LOGS))
    if which:
        callback.on_train_end(None, state, None)
    assert [r.getMessage() for r in caplog.records] == [metric_line(40, LOGS)]
    assert capsys.readouterr().out == ""


@pytest.fixture
def restored_logging():
    root, names = logging.getLogger(), textclf_log.CHATTY
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_onnx_export_loggers_stay_at_warning(restored_logging):
    """ONNX export logs ~186 INFO lines through onnxscript and onnx_ir (constant folding, pass infrastructure)."""
    textclf_log.setup(0)
    for name in ("onnxscript", "onnxscript.optimizer._constant_folding", "onnx_ir", "onnx_ir.passes._pass_infra",
                 "torch.onnx"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    assert logging.getLogger("training.train").getEffectiveLevel() == logging.INFO
