"""The stage CLIs: `--help`, option parsing into the config dataclasses, and user mistakes reported as
one `error: ...` line with exit code 2 and no traceback (in process and as real subprocesses)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from handlers.bundle import BundleError
from textclf.core.errors import Failure, UserError
from textclf.core.options import command_line, option, parse_config, run
from training.data import DataError
from training.export import ExportConfig
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The timeout only guards against a hang (e.g. a hub retry loop); nothing asserts on time.
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **env})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- subprocess

def test_train_help_lists_every_option():
    result = run_module("training.train", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for flag in ("--output-dir", "--data", "--model", "--text-column", "--label-column", "--max-steps",
                 "--max-train-samples", "--max-length", "--grad-accum", "--early-stopping-patience",
                 "--no-resume", "--no-group-by-length", "--validation-fraction"):
        assert flag in out, flag
    assert "{none,balanced}" in out and "{auto,fp32,bf16,fp16}" in out
    assert "stratified subset of train" in out  # field help text reaches argparse
    assert "(default: 128)" in out


def test_train_data_error_is_one_line(tmp_path, tiny_roberta_dir):
    data = tmp_path / "reviews.csv"
    pd.DataFrame({"body": ["good", "bad"], "label": ["pos", "neg"]}).to_csv(data, index=False)
    result = run_module("training.train", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                        "--model", str(tiny_roberta_dir))
    line = one_error_line(result)
    assert f"{data}: column 'text' not found (columns: body, label); pass --text-column" in line
    assert not (tmp_path / "run").exists()


def test_train_hub_model_offline_fails_with_alternatives(tmp_path):
    data = tmp_path / "train.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["a", "b"] * 10}).to_csv(data, index=False)
    result = run_module("training.train", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                        "--model", "roberta-base", HF_HUB_OFFLINE="1")
    line = one_error_line(result)
    assert "'roberta-base'" in line and "HF_HUB_OFFLINE is set" in line
    for alternative in ("--model DIR", "omit --model", "--data DIR", "builtin:tweets"):
        assert alternative in line, alternative
    assert not (tmp_path / "run").exists()


def test_export_cli_refuses_a_non_run(tmp_path):
    result = run_module("training.export", "--run-dir", str(tmp_path), "--output-dir", str(tmp_path / "bundle"))
    line = one_error_line(result)
    assert "run.json: missing" in line
    assert not (tmp_path / "bundle").exists()


# ---------------------------------------------------------------------------------------------- in process

def test_options_become_typed_config_fields():
    config = parse_config(TrainConfig, ["--output-dir", "runs/x", "--max-train-samples", "50", "--no-resume",
                                        "--class-weights", "balanced", "--learning-rate", "3e-5", "--epochs", "1.5"])
    assert config == TrainConfig(output_dir="runs/x", max_train_samples=50, resume=False, class_weights="balanced",
                                 learning_rate=3e-5, epochs=1.5)
    assert parse_config(TrainConfig, ["--output-dir", "o"]).max_train_samples is None
    export = parse_config(ExportConfig, ["--run-dir", "r", "--output-dir", "o", "--quantize", "int8",
                                         "--parity-tolerance", "1e-3", "--force"])
    assert (export.quantize, export.parity_tolerance, export.force, export.variant) == ("int8", 1e-3, True, "int8")


@dataclass
class _Bench:
    """A benchmark's options, one of each kind."""
    run: str = option("a required option")
    repeats: int = option("an int", 3)
    max_texts: int | None = option("optional", None)
    stock: bool = option("a flag on by default", True)
    quick: bool = option("a flag off by default", False)
    chunk: int | str | None = option("parsed", "auto", parse=lambda t: None if t == "none" else t if t == "auto" else int(t))


@pytest.mark.parametrize("config, expected", [
    (_Bench(run="r"), "python -m b --run r"),
    (_Bench(run="runs/x", repeats=5, max_texts=200, stock=False, quick=True, chunk=None),
     "python -m b --run runs/x --repeats 5 --max-texts 200 --no-stock --quick --chunk none"),
])
def test_command_line_names_what_differs_from_the_defaults_and_parses_back(config, expected):
    line = command_line("python -m b", config)
    assert line == expected
    assert parse_config(_Bench, shlex.split(line)[3:]) == config


def test_export_help_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(ExportConfig, ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--run-dir" in out and "{none,int8}" in out and "--max-accuracy-drop" in out and "--force, --no-force" in out


@pytest.mark.parametrize("argv, message", [
    (["--output-dir", "o", "--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    (["--output-dir", "o", "--max-train-samples", "1"], "error: --max-train-samples must be at least 2, got 1"),
])
def test_invalid_values_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize("argv, fragment", [
    (["--output-dir", "o", "--class-weights", "inverse"], "invalid choice: 'inverse'"),
    (["--output-dir", "o", "--batch-size", "eight"], "invalid int value: 'eight'"),
    ([], "the following arguments are required: --output-dir"),
])
def test_argparse_mistakes_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_run_reports_user_errors_and_failures_and_passes_through_bugs(capsys):
    def fails_with(error):
        def main(config):
            raise error
        return main

    argv = ["--output-dir", "o"]
    for error, code in ((UserError("bad flag"), 2), (DataError("train.csv: no rows"), 2),
                        (BundleError("model.pt: missing"), 2), (Failure("TorchServe 500: boom"), 1)):
        assert run(fails_with(error), TrainConfig, argv) == code
        assert capsys.readouterr().err == f"error: {error}\n"
    # A programming error is not a user mistake: it keeps its traceback.
    with pytest.raises(ZeroDivisionError):
        run(fails_with(ZeroDivisionError("bug")), TrainConfig, argv)
    seen = []
    assert run(seen.append, TrainConfig, argv, show=lambda result: "shown") == 0
    assert seen == [TrainConfig(output_dir="o")] and capsys.readouterr().out == "shown\n"


def test_config_file_gives_defaults_that_flags_override(tmp_path, capsys):
    from textclf.pipelines.drift import DriftConfig
    from training.tune import TuneConfig  # a nested dataclass (its `train`): the file nests it as an object

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"learning_rate": 3e-4, "epochs": 4, "output_dir": "from-file"}))
    c = parse_config(TrainConfig, ["--config", str(recipe), "--epochs", "2"])
    assert (c.learning_rate, c.epochs, c.output_dir) == (3e-4, 2, "from-file")  # a required option may come from it
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"train": {"epochs": 5}, "trials": 3}))
    tune = parse_config(TuneConfig, ["--config", str(nested), "--output-dir", "x"])
    assert (tune.train.epochs, tune.trials, tune.train.output_dir) == (5, 3, "x")
    recipe.write_text(json.dumps({"epochs": 4, "learnig_rate": 1}))
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, ["--config", str(recipe), "--output-dir", "x"])
    assert info.value.code == 2 and "unknown option(s) learnig_rate" in capsys.readouterr().err
    # tsclient's own --config (the server's config.properties) is left alone
    assert "--config JSON" not in parse_help(DriftConfig)


def parse_help(cls) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_config(cls, ["--help"])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- the command

SCRIPT = """
import logging, sys
from dataclasses import dataclass
from textclf.core.options import option, run

@dataclass
class Config:
    lines: int = option("lines to print", 1)

def main(config):
    logging.getLogger("textclf.example").info("an info line")
    logging.getLogger("textclf.example").warning("a warning line")
    return "\\n".join(f"line {i}" for i in range(config.lines))

sys.exit(run(main, Config, prog="example", show=str))
"""


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_one_logging_setup_with_quiet_and_verbose():
    default, quiet = run_script(), run_script("--quiet")
    assert default.returncode == quiet.returncode == 0 and default.stdout == quiet.stdout == "line 0\n"
    assert "I textclf.example: an info line" in default.stderr and "W textclf.example: a warning line" in default.stderr
    assert "an info line" not in quiet.stderr and "a warning line" in quiet.stderr
    assert run_script("-q", "-v").returncode == 2  # one or the other


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # `textclf summary RUN | head -1`: the rest of the output has nowhere to go; no BrokenPipeError traceback.
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "--lines", "200000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "line 0\n"
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_textclf_lists_every_verb_and_runs_each_modules_own_cli():
    from textclf.cli import VERBS

    listed = subprocess.run([sys.executable, "-m", "textclf", "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and all(f"  {verb} " in listed.stdout for verb in VERBS)
    loaded = subprocess.run([sys.executable, "-c", "import sys, textclf.cli; print('torch' in sys.modules)"],
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout == "False\n"  # the command's table loads no torch: `textclf --help` answers at once
    unknown = subprocess.run([sys.executable, "-m", "textclf", "trian"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown verb 'trian'")
    helped = subprocess.run([sys.executable, "-m", "textclf", "register", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: textclf register") and "--workers" in helped.stdout


def test_a_copy_installed_without_its_checkout_says_how_to_install(tmp_path, monkeypatch):
    from textclf.core import paths

    assert paths.missing(tmp_path / "x.properties") == f"{tmp_path / 'x.properties'} not found"
    monkeypatch.setattr(paths, "ROOT", tmp_path)  # site-packages after `pip install .`: no pyproject.toml beside it
    assert "install it with `pip install -e .`" in paths.missing(tmp_path / "config.properties")
