"""Build a versioned TorchServe archive (<store>/<name>-<version>.mar) from an export bundle.

The bundle is checked (labels, model card, model.pt hash, tokenizer files, handler options) before
anything is built. torch-model-archiver writes into a hidden temp dir inside the store, and the
finished file is moved into place in one step, so the store never holds a half-written archive and
a failed build leaves nothing behind.

    python -m textclf.torchserve.archive --bundle runs/demo/export --name classifier --version 1.0
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

import handlers
from handlers import bundle
from handlers.capture import ReviewConfig
from handlers.checks import check_int
from handlers.config import HandlerConfig
from textclf.core import paths
from textclf.core.errors import Failure, UserError
from textclf.core.options import option, run

logger = logging.getLogger(__name__)

HANDLERS_DIR = Path(handlers.__file__).resolve().parent
HANDLER_FILE = "text_classifier.py"
# The torch-model-archiver CLI, run by this interpreter so that it is the pinned version from the venv.
ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
# torch-model-archiver's own model-name pattern; versions follow it too since both end up in a file name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Names the archive itself uses at its root; a bundle file with one of them would be overwritten.
RESERVED = {"handlers", HANDLER_FILE, "model-config.yaml", "MAR-INF"}


class ArchiveError(UserError):
    """A user mistake: bad option, bad bundle, existing archive."""


class ArchiverFailed(Failure):
    """torch-model-archiver itself failed; the message carries its full output."""


@dataclass
class ArchiveConfig:
    """Build a versioned TorchServe archive (<store>/<name>-<version>.mar) from an export bundle.

    The archive is the one source of its deployment shape: batch size, batch delay, workers and the
    handler options below go into its model-config.yaml, and `make register`/`make scale` read them there.
    Each worker runs CPU cores / max-workers threads (unless --threads), so the archive refuses to be run
    with more workers than --max-workers."""

    bundle: Path = option("export bundle dir (make export writes runs/<run>/export)")
    name: str = option("model name clients use in URLs")
    version: str = option("model version, e.g. 1.0; the archive is <name>-<version>.mar")
    store: Path = option("TorchServe model store dir", paths.MODEL_STORE)
    batch_size: int = option("requests TorchServe batches into one handler call", 32)
    # A longer delay adds to every lone request and did not raise throughput (bench/JOURNAL.md).
    max_batch_delay: int = option("ms TorchServe waits to fill a batch", 1)
    min_workers: int = option("workers started at registration", 1)
    max_workers: int = option("most workers this archive may run; CPU threads are split between them", 1)
    response_timeout: int = option("s before a stuck worker is restarted", 120)
    handler: HandlerConfig = option("the handler: section", default_factory=HandlerConfig)
    review: ReviewConfig = option("the review: section (capture stores request text; off by default)",
                                  default_factory=ReviewConfig)
    force: bool = option("replace an existing archive of this name and version", False)
    template: Path = option("model-config.yaml template", paths.MODEL_CONFIG_TEMPLATE)

    def __post_init__(self):
        self.bundle, self.store, self.template = Path(self.bundle), Path(self.store), Path(self.template)
        if isinstance(self.handler, dict):  # a handler: section as written in YAML, checked like one
            self.handler = HandlerConfig.from_model_yaml({"handler": self.handler})
        if isinstance(self.review, dict):
            self.review = ReviewConfig.from_model_yaml({"review": self.review})
        for what, value in (("name", self.name), ("version", self.version)):
            if not isinstance(value, str) or not NAME_PATTERN.match(value):
                raise ArchiveError(f"{what} {value!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . -")
        check_int("--batch-size", self.batch_size, 1, error=UserError)
        check_int("--max-batch-delay", self.max_batch_delay, 0, error=UserError)
        check_int("--min-workers", self.min_workers, 1, error=UserError)
        check_int("--max-workers", self.max_workers, self.min_workers, error=UserError)
        check_int("--response-timeout", self.response_timeout, 1, error=UserError)
        if not self.template.is_file():
            raise ArchiveError(f"model-config.yaml template {paths.missing(self.template)}")
        self._check_bundle()

    def _check_bundle(self) -> None:
        """Everything the handler checks at load time, checked now: a broken bundle never becomes a .mar."""
        if not self.bundle.is_dir():
            raise ArchiveError(f"{self.bundle}: bundle directory not found (run `make export` first)")
        from handlers.long_texts import CARD_KEY, policy_from_section  # lazy: it loads torch, which --help need not

        card = bundle.check(self.bundle)
        self.model_path = card.model_path  # model.pt or model.onnx: the card's runtime says which
        self.handler.resolve_max_length(card.max_length)
        policy_from_section(card.raw.get(CARD_KEY), card.problem_type, self.bundle / bundle.CARD_FILE)
        clashes = sorted(RESERVED & {p.name for p in self.bundle.iterdir()})
        if clashes:
            raise ArchiveError(f"{self.bundle}: contains {clashes}, names the archive reserves for itself")

    @property
    def target(self) -> Path:
        return self.store / f"{self.name}-{self.version}.mar"


def model_config(config: ArchiveConfig) -> dict:
    """The archive's model-config.yaml: the template with this build's values."""
    import torch  # imported here: the server's verbs read archives and need no torch

    doc = yaml.safe_load(config.template.read_text()) or {}
    # Only the handler options that differ from the handler's defaults, as the user gave them.
    defaults = HandlerConfig()
    handler = {f.name: getattr(config.handler, f.name) for f in dataclasses.fields(HandlerConfig)
               if getattr(config.handler, f.name) != getattr(defaults, f.name)}
    doc.update(minWorkers=config.min_workers, maxWorkers=config.max_workers, batchSize=config.batch_size,
               maxBatchDelay=config.max_batch_delay, responseTimeout=config.response_timeout, handler=handler)
    if config.review.review:  # written only when on: an archive without the section captures nothing
        doc["review"] = dataclasses.asdict(config.review)
    if torch.cuda.is_available():
        doc["deviceType"] = "gpu"
    return doc


def _stage(config: ArchiveConfig, root: Path) -> tuple[Path, Path]:
    """Extra files (bundle minus model.pt, plus the handlers package) and the model-config.yaml."""
    extra = root / "extra"
    extra.mkdir()
    for item in config.bundle.iterdir():
        if item.name == config.model_path.name or item.name.startswith("."):
            continue  # the model file goes in as --serialized-file
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, extra / item.name)
    (extra / "handlers").mkdir()
    for source in sorted(HANDLERS_DIR.glob("*.py")):
        shutil.copy2(source, extra / "handlers" / source.name)
    config_file = root / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(model_config(config), sort_keys=False))
    return extra, config_file


def _run_archiver(config: ArchiveConfig, extra: Path, config_file: Path, out_dir: Path, tmp: Path) -> Path:
    cmd = [*ARCHIVER, "--model-name", config.name, "--version", config.version,
           "--serialized-file", str(config.model_path), "--handler", str(extra / "handlers" / HANDLER_FILE),
           "--extra-files", str(extra), "--config-file", str(config_file), "--export-path", str(out_dir)]
    # The archiver stages in $TMPDIR/<model name> and deletes it first: a private TMPDIR keeps two
    # concurrent builds of one model name from destroying each other's files.
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(tmp)))
    built = out_dir / f"{config.name}.mar"
    if result.returncode != 0 or not built.is_file():
        output = (result.stdout + result.stderr).strip() or "(no output)"
        raise ArchiverFailed(f"torch-model-archiver failed (exit {result.returncode}, archive "
                             f"{'written' if built.is_file() else 'missing'}):\n{output}")
    return built


def _publish(built: Path, target: Path, force: bool) -> None:
    if force:
        os.replace(built, target)
        return
    try:
        os.link(built, target)  # atomic, and unlike rename it refuses to replace an archive built meanwhile
    except FileExistsError:
        raise ArchiveError(f"{target} already exists; pass --force to replace it") from None


def build_archive(config: ArchiveConfig) -> Path:
    target = config.target
    if target.exists() and not config.force:
        raise ArchiveError(f"{target} already exists; pass --force to replace it")
    config.store.mkdir(parents=True, exist_ok=True)
    # The output dir is hidden and inside the store, so the final move is a same-filesystem rename that
    # TorchServe's store scan (which skips hidden entries) never sees half done.
    with tempfile.TemporaryDirectory(prefix="mar-stage-") as stage, \
            tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=config.store) as out_dir:
        extra, config_file = _stage(config, Path(stage))
        built = _run_archiver(config, extra, config_file, Path(out_dir), Path(stage))
        _publish(built, target, config.force)
    logger.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


def archive_problem(path: Path) -> str | None:
    """Why `path` is not a readable model archive, or None. TorchServe only says "Failed to save model"."""
    try:
        with zipfile.ZipFile(path) as z:
            corrupt, names = z.testzip(), set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{path.name} is not a readable zip archive ({e}): truncated or corrupt; rebuild it with `textclf archive`"
    if corrupt is not None:
        return f"{path.name}: {corrupt} is corrupt (CRC mismatch); rebuild it with `textclf archive`"
    if "MAR-INF/MANIFEST.json" not in names:
        return f"{path.name} has no MAR-INF/MANIFEST.json: not built by torch-model-archiver (`textclf archive`)"
    return None


@dataclass(frozen=True)
class Plan:
    """The deployment shape an archive declares in its model-config.yaml."""

    min_workers: int
    max_workers: int | None  # None: the archive has no model-config.yaml, so it plans no limit
    batch_size: int
    max_batch_delay: int
    response_timeout: int


def read_plan(path: Path) -> Plan:
    """The plan of a built archive (see archive_problem for a readable archive first)."""
    with zipfile.ZipFile(path) as z:
        planned = "model-config.yaml" in z.namelist()
        doc = (yaml.safe_load(z.read("model-config.yaml")) if planned else {}) or {}
    max_workers = int(doc.get("maxWorkers", doc.get("minWorkers", 1))) if planned else None
    return Plan(min_workers=int(doc.get("minWorkers", 1)), max_workers=max_workers,
                batch_size=int(doc.get("batchSize", 1)), max_batch_delay=int(doc.get("maxBatchDelay", 100)),
                response_timeout=int(doc.get("responseTimeout", 120)))


def main(config: ArchiveConfig) -> Path:
    return build_archive(config)


def command(argv=None, prog="python -m textclf.torchserve.archive") -> int:
    return run(main, ArchiveConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
