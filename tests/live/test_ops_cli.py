"""The command line behind the make targets: JSON on stdout, one-line errors and non-zero exit codes."""
import json

import pytest

from tests.live.conftest import NAME
from tsclient import ops

pytestmark = pytest.mark.live


def run(live, capsys, *argv):
    code = ops.cli([argv[0], "--state-dir", str(live.state_dir), *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_health_and_predict_print_json(live, capsys):
    code, out, _ = run(live, capsys, "health")
    assert code == 0 and json.loads(out) == {"status": "Healthy"}
    code, out, _ = run(live, capsys, "predict", "--name", NAME, "--text", "What a wonderful day!", "--top-k", "1")
    assert code == 0 and len(json.loads(out)["scores"]) == 1


def test_torchserve_refusal_is_one_line_exit_1(live, capsys):
    code, out, err = run(live, capsys, "unregister", "--name", "no-such-model", "--version", "1.0")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: TorchServe 404") and "no-such-model" in err


def test_unreachable_server_is_named(tmp_path, capsys):
    from tsclient.server import free_ports

    (port,) = free_ports(1)
    config = tmp_path / "config.properties"
    config.write_text(f"inference_address=http://127.0.0.1:{port}\nmodel_store=store\n")
    code = ops.cli(["health", "--config", str(config), "--state-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"error: cannot reach TorchServe at http://127.0.0.1:{port}")
