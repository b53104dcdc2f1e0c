"""Operate a TorchServe: the command line behind the make serving targets.

    python -m textclf.torchserve.ops serve
    python -m textclf.torchserve.ops serve --config config.locked.properties --load-models classifier-1.0.mar
    python -m textclf.torchserve.ops register --name classifier --version 1.0 --workers 2
    python -m textclf.torchserve.ops predict --name classifier --text "What a wonderful day!"
    python -m textclf.torchserve.ops predict --name classifier --file texts.csv --output answers.jsonl

Every verb reads the server's addresses from config.properties (or the derived config a test server
wrote into its state dir) and its keys from <state-dir>/key_file.json. Results are printed as JSON;
a refusal prints TorchServe's own message on one line and exits 1 (2 for a mistake in the arguments).

The deployment shape comes from the archive (textclf.torchserve.archive): `register` and `scale` read its batch size,
batch delay and workers from its model-config.yaml, and refuse more workers than it plans (maxWorkers),
because each worker's threads were sized for that many.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from handlers.checks import check_int
from textclf.core import paths
from textclf.core.errors import Failure, UserError
from textclf.core.files import write_atomically
from textclf.core.options import option, run
from textclf.torchserve import properties, server, server_logs
from textclf.torchserve.archive import Plan, archive_problem, read_plan
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.rest import TorchServeClient

log = logging.getLogger(__name__)
TEXT_FILES = (".csv", ".jsonl", ".txt")
PROGRESS_EVERY_S = 10.0  # predict --file: a progress line at most this often (and one at the end)


class OpsError(UserError):
    """A mistake in what was asked (missing archive, bad number, more workers than planned)."""


def _nonempty(name: str, value: str | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise OpsError(f"{name} must be a non-empty string without '/', got {value!r}")


@dataclass
class Target:
    """the server (default: the one `textclf serve` starts from this repository)"""

    config: Path = option("TorchServe config.properties", paths.SERVER_CONFIG)
    state_dir: Path = option("the server's working dir, where key_file.json and logs/ live", paths.ROOT)

    def __post_init__(self):
        self.config, self.state_dir = Path(self.config), Path(self.state_dir).resolve()
        if not self.config.is_file():
            raise OpsError(f"TorchServe config file {paths.missing(self.config)}")

    def properties(self) -> dict[str, str]:
        derived = self.state_dir / properties.DERIVED_CONFIG  # written only while a server runs with overrides
        return properties.read_properties(derived if derived.is_file() else self.config)

    def endpoints(self) -> properties.Endpoints:
        return properties.Endpoints.from_properties(self.properties(), self.state_dir)

    def model_store(self) -> Path:
        return (self.state_dir / self.properties().get("model_store", "model-archive/store")).resolve()

    def client(self) -> TorchServeClient:
        ep = self.endpoints()
        return TorchServeClient(ep.inference_url, ep.management_url, ep.key_file)


def _target() -> Any:
    return option("", default_factory=Target)


@dataclass
class ServeConfig:
    """start TorchServe and wait until it is healthy"""

    start_timeout_s: float = option("seconds to wait for /ping and for the workers of models loaded at start", 120.0,
                                    flag="timeout")
    load_models: str | None = option("archives of the model store to load at start, comma-separated (replaces "
                                        "the config's load_models; see config.locked.properties)", None)
    target: Target = _target()

    def __post_init__(self):
        if self.start_timeout_s <= 0:
            raise OpsError("--timeout must be positive")
        if self.load_models is not None:
            archives = [a.strip() for a in self.load_models.split(",") if a.strip()]
            bad = [a for a in archives if "/" in a or not a.endswith(".mar")]
            if not archives or bad:
                raise OpsError(f"load_models must list archive file names of the model store (x-1.0.mar,...), "
                               f"got {self.load_models!r}")
            self.load_models = ",".join(archives)


@dataclass
class StopConfig:
    """stop TorchServe and clean its stale state"""

    target: Target = _target()


@dataclass
class RegisterConfig:
    """register <store>/<name>-<version>.mar as its archive plans it; returns once its workers are up"""

    name: str = option("model name clients use in URLs")
    version: str = option("archive version, e.g. 1.0")
    workers: int | None = option("workers to start (default: the archive's minWorkers; at most its maxWorkers)",
                                    None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)
        check_int("--workers", self.workers, 1, optional=True, error=UserError)

    @property
    def archive(self) -> str:
        return f"{self.name}-{self.version}.mar"


@dataclass
class ScaleConfig:
    """set a version's workers (min = max = --workers, at most the archive's maxWorkers), synchronously"""

    name: str = option("model name")
    workers: int = option("worker count; 0 stops all (requests then get 503)")
    version: str | None = option("version to scale (default: the default version)", None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version, optional=True)
        check_int("--workers", self.workers, 0, error=UserError)


@dataclass
class SetDefaultConfig:
    """make VERSION the one unversioned requests reach (roll forward or back)"""

    name: str = option("model name")
    version: str = option("model version")
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version)


@dataclass
class UnregisterConfig(SetDefaultConfig):
    """remove one version once nothing is queued for it (its workers stop)"""


@dataclass
class ModelsConfig:
    """every model with all its versions, or with --name every version of one model in full"""

    name: str | None = option("describe this model (default: list every model)", None)
    version: str | None = option("with --name: one version, or 'all'", "all")
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name, optional=True)
        _nonempty("version", self.version, optional=True)


@dataclass
class PredictConfig:
    """classify one text (--text) or every text of a file (--file) over REST and print the JSON answers"""

    name: str = option("model name")
    text: str | None = option("the text to classify (or --file)", None)
    file: Path | None = option(
        "classify every text of this file, in requests of at most the handler's texts per request: .csv or .jsonl "
        "(the --text-column of each row or object; a .jsonl line may also be a bare JSON string) or .txt (one text "
        "per line). Prints one JSON answer per line, the answer to the file's n-th text on line n; a row without "
        "a usable text stops it before anything is sent", None)
    text_column: str = option("with --file (.csv, .jsonl): the column holding the text", "text")
    output: Path | None = option("with --file: write the answers to this file instead of stdout (whole or not at all: "
                                 "written to a temporary file, renamed once every text is answered)", None)
    version: str | None = option("version to call (default: the default version)", None)
    top_k: int | None = option("labels to return in scores (default: the archive's default-top-k)", None)
    target: Target = _target()

    def __post_init__(self):
        _nonempty("name", self.name)
        _nonempty("version", self.version, optional=True)
        if (self.text is None) == (self.file is None):
            raise OpsError("give --text or --file (exactly one)")
        check_int("--top-k", self.top_k, 1, optional=True, error=UserError)
        if self.text is not None:
            if not isinstance(self.text, str) or not self.text.strip():
                raise OpsError("text must not be empty")
            if self.output is not None:
                raise OpsError("--output goes with --file (the answer to --text is printed)")
            return
        self.file = Path(self.file)
        if self.file.suffix.lower() not in TEXT_FILES:
            raise OpsError(f"--file {self.file}: expected a {', '.join(TEXT_FILES)} file")
        if not self.file.is_file():
            raise OpsError(f"--file {self.file}: no such file")
        if self.file.suffix.lower() == ".txt" and self.text_column != "text":
            raise OpsError("--text-column is for .csv and .jsonl files; a .txt file holds one text per line")
        if self.output is not None and Path(self.output).resolve() == self.file.resolve():
            raise OpsError(f"--output {self.output} is the --file itself; write the answers elsewhere")


@dataclass
class HealthConfig:
    """TorchServe's /ping (with the inference key: with token authorization on, /ping needs it too)"""

    target: Target = _target()


def _serve(c: ServeConfig) -> Any:
    overrides = {"load_models": c.load_models} if c.load_models else {}  # not `properties`: that is the module
    cfg = properties.ServerConfig(config=c.target.config, state_dir=c.target.state_dir, start_timeout_s=c.start_timeout_s,
                                  properties=overrides)
    ep = server.start(cfg)
    return {"status": "TorchServe is running", "inference": ep.inference_url, "management": ep.management_url,
            "metrics": ep.metrics_url, "grpc_inference": ep.grpc_inference, "grpc_management": ep.grpc_management,
            "key_file": str(ep.key_file), "logs": str(cfg.state_dir / "logs"), "model_store": str(cfg.model_store)}


def _stop(c: StopConfig) -> Any:
    was_running = server.stop(properties.ServerConfig(config=c.target.config, state_dir=c.target.state_dir))
    return {"status": "TorchServe stopped" if was_running else "TorchServe was not running (stale state cleaned)"}


def _register(c: RegisterConfig) -> Any:
    store = c.target.model_store()
    path = store / c.archive
    if not path.is_file():
        found = sorted(p.name for p in store.glob("*.mar")) if store.is_dir() else []
        raise OpsError(f"{path} not found (archives in the store: {', '.join(found) or 'none'}); "
                       "build it with `textclf archive`")
    problem = archive_problem(path)
    if problem:
        raise OpsError(problem)
    plan = _plan(path)
    workers = plan.min_workers if c.workers is None else c.workers
    _check_planned(workers, plan, c.archive)
    client, log_start = c.target.client(), server_logs.log_size(c.target.state_dir)
    try:
        # A bare file name: resolved inside the model store, so the config's allowed_urls never blocks it.
        client.register(c.name, c.archive, initial_workers=workers, batch_size=plan.batch_size,
                        max_batch_delay=plan.max_batch_delay, response_timeout=plan.response_timeout, synchronous=True)
    except TorchServeError as e:
        raise _explained(e, c, log_start) from None
    if workers != plan.min_workers:  # TorchServe starts the archive's minWorkers whatever initial_workers says
        try:
            _scale(ScaleConfig(c.name, workers, c.version, target=c.target))
        except OpsError as e:
            raise OpsError(f"{c.name} {c.version} is registered with {plan.min_workers} worker(s), but scaling it to "
                           f"{workers} failed: {e}") from None
    else:
        _wait_until_ready(client, c.name, c.version, workers)
    # TorchServe's own answer ("registered with N initial workers") repeats initial_workers, which its minWorkers
    # overrides: say what runs instead.
    ready = _ready_workers(client, c.name, c.version)
    return {"status": f'Model "{c.name}" Version: {c.version} registered with {ready} worker(s) READY', "workers": ready}


def _plan(archive: Path) -> Plan:
    try:
        return read_plan(archive)
    except (ValueError, KeyError, yaml.YAMLError, zipfile.BadZipFile, OSError) as e:
        raise OpsError(f"{archive.name}: cannot read its model-config.yaml ({e}); rebuild it with `textclf archive`") from None


def _check_planned(workers: int, plan: Plan, archive: str) -> None:
    if plan.max_workers is not None and workers > plan.max_workers:
        raise OpsError(f"{archive} plans at most {plan.max_workers} worker(s), each with its share of the CPU "
                       f"cores as threads; {workers} would oversubscribe them. Rebuild it with "
                       f"`textclf archive ... --max-workers {workers}` (a new version, or --force)")


def _explained(e: TorchServeError, c: RegisterConfig, log_start: int) -> TorchServeError:
    """A failed registration (500, no reason given) with its reason from the worker's log (the archive itself
    was checked readable before registering). TorchServe has already unregistered the failed version and
    stopped its workers by then."""
    if e.status != 500:
        return e
    failed = re.search(r"model (\S+) version: (\S+)", e.message)
    name, version = failed.groups() if failed else (c.name, c.version)
    reason = server_logs.worker_error(c.target.state_dir, name, version, since=log_start)
    return TorchServeError(e.status, f"{e.message.rstrip('.')}: {reason}", e.kind) if reason else e


def _scale(c: ScaleConfig, ready_timeout_s: float = 120.0) -> Any:
    client = c.target.client()
    archive = _archive_of(client, c)
    if archive is not None:
        _check_planned(c.workers, _plan(archive), archive.name)
    answer = client.scale(c.name, c.version, min_workers=c.workers, max_workers=c.workers, synchronous=True)
    _wait_until_ready(client, c.name, c.version, c.workers, ready_timeout_s)
    return answer


def _wait_until_ready(client, name: str, version: str | None, workers: int, timeout_s: float = 120.0) -> None:
    """A synchronous register or scale-up can answer a moment before its last worker reports READY (seen once
    in the live tests); callers that go on to send traffic expect every worker they asked for to be serving."""
    deadline = time.monotonic() + timeout_s
    while (ready := _ready_workers(client, name, version)) != workers:
        if time.monotonic() > deadline:
            raise OpsError(f"{name}: {ready} of {workers} workers READY after {timeout_s:.0f} s; "
                           "see logs/model_log.log")
        time.sleep(0.1)


def _archive_of(client, c: ScaleConfig) -> Path | None:
    """The store's archive of the version being scaled (a URL registration is saved under its file name);
    None if it is not there, and then no plan is checked."""
    (described,) = client.describe(c.name, c.version)
    path = c.target.model_store() / Path(urlparse(str(described.get("modelUrl", ""))).path).name
    return path if path.is_file() else None


def _ready_workers(client, name: str, version: str | None) -> int:
    (described,) = client.describe(name, version)
    return sum(w.get("status") == "READY" for w in described.get("workers", []))


def _set_default(c: SetDefaultConfig) -> Any:
    return c.target.client().set_default(c.name, c.version)


def _unregister(c: UnregisterConfig) -> Any:
    return c.target.client().unregister(c.name, c.version)  # drains the version first (TorchServeClient.drain)


def _models(c: ModelsConfig) -> Any:
    client = c.target.client()
    if c.name is not None:
        return client.describe(c.name, c.version)
    return [_summary(client, m["modelName"]) for m in client.list_models()]


def _summary(client: TorchServeClient, name: str) -> dict:
    """One model with every version: TorchServe's own list names only the default version's archive."""
    (default,) = client.describe(name)
    versions = [{"version": d["modelVersion"], "archive": d.get("modelUrl"), "batchSize": d.get("batchSize"),
                 "maxBatchDelay": d.get("maxBatchDelay"),
                 "workers": sum(w.get("status") == "READY" for w in d.get("workers", [])),
                 "minWorkers": d.get("minWorkers"), "maxWorkers": d.get("maxWorkers")}
                for d in client.describe(name, "all")]
    return {"modelName": name, "defaultVersion": default["modelVersion"], "versions": versions}


def _predict(c: PredictConfig) -> Any:
    client = c.target.client()
    if c.text is not None:
        return client.predict(c.name, c.text, version=c.version, top_k=c.top_k)
    texts, places = read_texts(c.file, c.text_column)
    answers = _answers(client, c, texts, places)
    if c.output is None:
        return JsonLines(json.dumps(answer, ensure_ascii=False) for answer in answers)
    write_atomically(Path(c.output), (json.dumps(answer, ensure_ascii=False) for answer in answers))
    return {"status": f"{len(texts)} texts of {c.file} classified", "output": str(c.output)}


class JsonLines(list):
    """Lines of JSON shown one per line (predict --file without --output), not as one indented document."""


def read_texts(path: Path, column: str = "text") -> tuple[list[str], list[str]]:
    """Every text of a .csv, .jsonl or .txt file in order, and where each was ("line 7"). A row without a usable
    text (missing, not a string, empty, invalid Unicode) is an OpsError naming its line: every text is answered
    or none is."""
    try:
        content = Path(path).read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte order mark is not text
    except UnicodeDecodeError as e:
        raise OpsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    suffix = Path(path).suffix.lower()
    rows = _csv_rows(path, content, column) if suffix == ".csv" else _line_rows(path, content, column, suffix == ".jsonl")
    if not rows:
        raise OpsError(f"{path}: no texts")
    return [text for text, _ in rows], [place for _, place in rows]


def _checked(value: Any, path: Path, place: str, column: str) -> str:
    if not isinstance(value, str):
        got = "missing" if value is None else f"not a string but {type(value).__name__}"
        raise OpsError(f"{path} {place}: the text ({column!r}) is {got}")
    if not value.strip():
        raise OpsError(f"{path} {place}: empty text (the server refuses empty texts; remove the row)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OpsError(f"{path} {place}: not valid Unicode (lone surrogate at character {e.start})") from None
    return value


def _csv_rows(path: Path, content: str, column: str) -> list[tuple[str, str]]:
    # newline="": csv reads line ends itself (inside quotes too), and nothing else splits a line (U+2028 may be text).
    reader = csv.DictReader(io.StringIO(content, newline=""), restkey="\0extra")
    if reader.fieldnames is None or column not in reader.fieldnames:
        raise OpsError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                       "choose one with --text-column")
    rows = []
    try:
        for row in reader:
            place = f"line {reader.line_num}"  # where the row ends (a quoted text may span lines)
            if "\0extra" in row:
                raise OpsError(f"{path} {place}: more fields than the header's {len(reader.fieldnames)} "
                               "(a comma in an unquoted text?)")
            rows.append((_checked(row[column], path, place, column), place))
    except csv.Error as e:
        raise OpsError(f"{path} line {reader.line_num}: {e}") from None
    return rows


def _line_rows(path: Path, content: str, column: str, jsonl: bool) -> list[tuple[str, str]]:
    lines = [line.removesuffix("\r") for line in content.split("\n")]  # not splitlines(): it splits on U+2028 too
    while lines and not lines[-1].strip():
        lines.pop()  # blank lines at the end are not rows
    rows = []
    for number, line in enumerate(lines, start=1):
        place = f"line {number}"
        value: Any = line
        if jsonl:
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                what = "an empty line" if not line.strip() else f"not JSON ({e.msg})"
                raise OpsError(f"{path} {place}: {what}; each line must be a JSON object or string") from None
            if isinstance(value, dict):
                value = value.get(column)
            elif not isinstance(value, str):
                raise OpsError(f"{path} {place}: a JSON {type(value).__name__}; each line must be a JSON object or "
                               "string")
        rows.append((_checked(value, path, place, column), place))
    return rows


def _answers(client: TorchServeClient, c: PredictConfig, texts: list[str], places: list[str]) -> list:
    """The answers to `texts` in order, requested in chunks of the client's max_texts (which the client
    lowers if the server's limit is smaller), with a progress line now and then."""
    answers: list = []
    last_line = time.monotonic()
    while len(answers) < len(texts):
        start = len(answers)
        chunk = texts[start: start + client.max_texts]
        try:
            got = client.predict(c.name, texts=chunk, version=c.version, top_k=c.top_k)
        except TorchServeError as e:
            raise _located(e, c.file, places, start) from None
        if not isinstance(got, list) or len(got) != len(chunk):
            raise Failure(f"{c.name} answered {len(got) if isinstance(got, list) else type(got).__name__} for "
                          f"{len(chunk)} texts ({c.file} {places[start]} on)")
        answers += got
        if len(answers) == len(texts) or time.monotonic() - last_line >= PROGRESS_EVERY_S:
            log.info("%s: %d of %d texts classified", c.file, len(answers), len(texts))
            last_line = time.monotonic()
    return answers


def _located(e: TorchServeError, path: Path, places: list[str], start: int) -> TorchServeError:
    """The handler names a refused text by its index in the request ("texts[3] is empty"): name its line."""
    match = re.match(r"texts\[(\d+)\]", e.message)
    if match and start + int(match.group(1)) < len(places):
        where = f"{path} {places[start + int(match.group(1))]}"
        return TorchServeError(e.status, f"{where}: {e.message[match.end():].strip()}", e.kind)
    return e


def _health(c: HealthConfig) -> Any:
    return c.target.client().health()


ACTIONS = {ServeConfig: _serve, StopConfig: _stop, RegisterConfig: _register, ScaleConfig: _scale,
           SetDefaultConfig: _set_default, UnregisterConfig: _unregister, ModelsConfig: _models,
           PredictConfig: _predict, HealthConfig: _health}


VERBS = {"serve": ServeConfig, "stop": StopConfig, "register": RegisterConfig, "scale": ScaleConfig,
         "set-default": SetDefaultConfig, "unregister": UnregisterConfig, "models": ModelsConfig,
         "predict": PredictConfig, "health": HealthConfig}
LOCKED_HINT = ("the server runs in locked mode (model API off: config.locked.properties), so models cannot be "
               "registered or unregistered; scaling workers and set-default still work. `textclf stop`, then "
               "`textclf serve`, starts it in managed mode")


def main(config) -> Any:
    """Run one verb; returns TorchServe's parsed answer. Raises OpsError, TorchServeError, ServerError."""
    try:
        return ACTIONS[type(config)](config)
    except TorchServeError as e:
        if e.status == 405 and e.kind == "MethodNotAllowedException":
            raise TorchServeError(e.status, f"{e.message.rstrip('.')}: {LOCKED_HINT}", e.kind) from None
        raise


def show(result: Any) -> str:
    """What a verb prints: its result as indented JSON, or JSON lines as they are (predict --file)."""
    if isinstance(result, JsonLines):
        return "\n".join(result)
    return json.dumps(result, indent=2, ensure_ascii=False)


def command(argv=None, prog="python -m textclf.torchserve.ops") -> int:
    return run(main, VERBS, argv, prog=prog, description=__doc__.split("\n\n")[0], show=show)


if __name__ == "__main__":
    sys.exit(command())
