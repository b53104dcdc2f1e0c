"""The command line behind the make targets: JSON on stdout, one-line errors and non-zero exit codes."""
import json

import pytest

from tests.live.conftest import NAME
from textclf.torchserve import ops
from textclf.torchserve.ports import free_ports

pytestmark = pytest.mark.live


def run(live, capsys, *argv):
    code = ops.command([argv[0], "--state-dir", str(live.state_dir), *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_health_and_predict_print_json(live, capsys):
    code, out, _ = run(live, capsys, "health")
    assert code == 0 and json.loads(out) == {"status": "Healthy"}
    code, out, _ = run(live, capsys, "predict", "--name", NAME, "--text", "What a wonderful day!", "--top-k", "1")
    assert code == 0 and len(json.loads(out)["scores"]) == 1


def test_predict_file_answers_every_text_in_order(live, capsys, caplog, tmp_path):
    texts = [f"text number {i}" + " and more" * (i % 7) for i in range(100)]  # two requests of the handler's 64
    path, out = tmp_path / "texts.txt", tmp_path / "answers.jsonl"
    path.write_text("\n".join(texts) + "\n")
    with caplog.at_level("INFO", logger="textclf.torchserve.ops"):
        code, stdout, _ = run(live, capsys, "predict", "--name", NAME, "--file", str(path), "--output", str(out),
                              "--top-k", "1")
    assert code == 0 and json.loads(stdout) == {"status": f"100 texts of {path} classified", "output": str(out)}
    assert f"{path}: 100 of 100 texts classified" in caplog.text
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == 100 and all(len(a["scores"]) == 1 for a in answers)
    for i in (0, 63, 64, 99):  # the n-th line answers the n-th text
        assert answers[i]["label"] == live.rest.predict(NAME, texts[i], top_k=1)["label"]
    code, stdout, _ = run(live, capsys, "predict", "--name", NAME, "--file", str(path))  # JSON lines on stdout
    assert code == 0 and [json.loads(line)["label"] for line in stdout.splitlines()] == [a["label"] for a in answers]


def test_predict_file_with_a_bad_row_sends_nothing(live, capsys, tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('text\n"fine"\n""\n')
    code, stdout, err = run(live, capsys, "predict", "--name", NAME, "--file", str(path))
    assert (code, stdout) == (2, "")
    assert err == f"error: {path} line 3: empty text (the server refuses empty texts; remove the row)\n"


def test_torchserve_refusal_is_one_line_exit_1(live, capsys):
    code, out, err = run(live, capsys, "unregister", "--name", "no-such-model", "--version", "1.0")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: TorchServe 404") and "no-such-model" in err


def test_unreachable_server_is_named(tmp_path, capsys):
    (port,) = free_ports(1)
    config = tmp_path / "config.properties"
    config.write_text(f"inference_address=http://127.0.0.1:{port}\nmodel_store=store\n")
    code = ops.command(["health", "--config", str(config), "--state-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"error: cannot reach TorchServe at http://127.0.0.1:{port}")
