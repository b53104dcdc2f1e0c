"""Build a versioned TorchServe archive (<store>/<name>-<version>.mar) from an export bundle.

The bundle is checked (labels, model card, model.pt hash, tokenizer files, handler options) before
anything is built. torch-model-archiver writes into a hidden temp dir inside the store, and the
finished file is moved into place in one step, so the store never holds a half-written archive and
a failed build leaves nothing behind.

    python -m tsclient.archive --bundle runs/demo/export --name classifier --version 1.0
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import handlers
from handlers.bundle import MODEL_FILE, BundleError, load_bundle_meta, verify_model
from handlers.config import HandlerConfig, HandlerConfigError, parse_chunk_size, require_tokenizer_files

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "model-archive" / "model-config.yaml"
HANDLERS_DIR = Path(handlers.__file__).resolve().parent
HANDLER_FILE = "text_classifier.py"
# The torch-model-archiver CLI, run by this interpreter so that it is the pinned version from the venv.
ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
# torch-model-archiver's own model-name pattern; versions follow it too since both end up in a file name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Names the archive itself uses at its root; a bundle file with one of them would be overwritten.
RESERVED = {"handlers", HANDLER_FILE, "model-config.yaml", "MAR-INF"}


class ArchiveError(Exception):
    """A user mistake: bad option, bad bundle, existing archive. Reported as one line, exit code 2."""


class ArchiverFailed(Exception):
    """torch-model-archiver itself failed; the message carries its full output."""


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArchiveError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class ArchiveConfig:
    bundle: Path
    name: str
    version: str
    store: Path = Path("model-archive/store")
    batch_size: int = 32
    max_batch_delay: int = 1  # ms; a longer delay adds to every lone request and did not raise throughput
    min_workers: int = 1
    max_workers: int = 1
    response_timeout: int = 120  # s
    handler: dict = field(default_factory=dict)  # the `handler:` section, see handlers/config.py
    force: bool = False
    template: Path = TEMPLATE

    def __post_init__(self):
        self.bundle, self.store, self.template = Path(self.bundle), Path(self.store), Path(self.template)
        for what, value in (("name", self.name), ("version", self.version)):
            if not isinstance(value, str) or not NAME_PATTERN.match(value):
                raise ArchiveError(f"{what} {value!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . -")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_batch_delay", self.max_batch_delay, 0)
        _check_int("min_workers", self.min_workers, 1)
        _check_int("max_workers", self.max_workers, self.min_workers)
        _check_int("response_timeout", self.response_timeout, 1)
        if not self.template.is_file():
            raise ArchiveError(f"{self.template}: model-config.yaml template not found")
        self._check_bundle()

    def _check_bundle(self) -> None:
        """Everything the handler checks at load time, checked now: a broken bundle never becomes a .mar."""
        if not self.bundle.is_dir():
            raise ArchiveError(f"{self.bundle}: bundle directory not found (run `make export` first)")
        _, card = load_bundle_meta(self.bundle)
        verify_model(self.bundle, card)
        require_tokenizer_files(self.bundle)
        HandlerConfig.from_model_yaml({"handler": self.handler}).resolve_max_length(int(card["max_length"]))
        clashes = sorted(RESERVED & {p.name for p in self.bundle.iterdir()})
        if clashes:
            raise ArchiveError(f"{self.bundle}: contains {clashes}, names the archive reserves for itself")

    @property
    def target(self) -> Path:
        return self.store / f"{self.name}-{self.version}.mar"


def model_config(config: ArchiveConfig) -> dict:
    """The archive's model-config.yaml: the template with this build's values."""
    import torch

    doc = yaml.safe_load(config.template.read_text()) or {}
    doc.update(minWorkers=config.min_workers, maxWorkers=config.max_workers, batchSize=config.batch_size,
               maxBatchDelay=config.max_batch_delay, responseTimeout=config.response_timeout,
               handler=dict(config.handler))
    if torch.cuda.is_available():
        doc["deviceType"] = "gpu"
    return doc


def _stage(config: ArchiveConfig, root: Path) -> tuple[Path, Path]:
    """Extra files (bundle minus model.pt, plus the handlers package) and the model-config.yaml."""
    extra = root / "extra"
    extra.mkdir()
    for item in config.bundle.iterdir():
        if item.name == MODEL_FILE or item.name.startswith("."):
            continue  # model.pt goes in as --serialized-file
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, extra / item.name)
    (extra / "handlers").mkdir()
    for source in sorted(HANDLERS_DIR.glob("*.py")):
        shutil.copy2(source, extra / "handlers" / source.name)
    config_file = root / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(model_config(config), sort_keys=False))
    return extra, config_file


def _run_archiver(config: ArchiveConfig, extra: Path, config_file: Path, out_dir: Path, tmp: Path) -> Path:
    cmd = [*ARCHIVER, "--model-name", config.name, "--version", config.version,
           "--serialized-file", str(config.bundle / MODEL_FILE), "--handler", str(extra / "handlers" / HANDLER_FILE),
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


USER_ERRORS = (ArchiveError, BundleError, HandlerConfigError)


def main(config: ArchiveConfig) -> Path:
    return build_archive(config)


def _chunk_size(text: str):
    try:
        return parse_chunk_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv=None) -> ArchiveConfig:
    p = argparse.ArgumentParser(prog="python -m tsclient.archive", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path, help="export bundle dir (make export writes runs/<run>/export)")
    p.add_argument("--name", required=True, help="model name clients use in URLs")
    p.add_argument("--version", required=True, help="model version, e.g. 1.0; the archive is <name>-<version>.mar")
    p.add_argument("--store", type=Path, default=Path("model-archive/store"), help="TorchServe model store dir")
    p.add_argument("--batch-size", type=int, default=ArchiveConfig.batch_size,
                   help="requests TorchServe batches into one forward pass")
    p.add_argument("--max-batch-delay", type=int, default=ArchiveConfig.max_batch_delay,
                   help="ms TorchServe waits to fill a batch")
    p.add_argument("--min-workers", type=int, default=1, help="workers started at registration")
    p.add_argument("--max-workers", type=int, default=1, help="most workers; CPU threads are split between them")
    p.add_argument("--response-timeout", type=int, default=120, help="s before a stuck worker is restarted")
    h = p.add_argument_group("handler options (model-config.yaml `handler:`; omitted ones use the handler's default)")
    h.add_argument("--max-texts-per-request", type=int, help="larger requests get HTTP 413 (default 64)")
    h.add_argument("--default-top-k", type=int, help="labels in `scores` when a request gives no top_k (default all)")
    h.add_argument("--threads", type=int, help="torch threads per worker (default CPU cores // max workers)")
    h.add_argument("--max-length", type=int, help="token limit, at most the bundle's (default the bundle's)")
    h.add_argument("--max-text-chars", type=int, help="texts are cut to this many characters (default 100000)")
    h.add_argument("--chunk-size", type=_chunk_size, default=argparse.SUPPRESS,
                   help="a batch is sorted by length and run in chunks of at most this many texts, each padded to "
                   "its own longest (default auto: 4 for fp32 and int8, 16 for bf16, one pass on a GPU; none: one pass)")
    h.add_argument("--profile", action="store_true", help="emit TorchServe's per-stage handler timing metrics")
    p.add_argument("--force", action="store_true", help="replace an existing archive of this name and version")
    a = p.parse_args(argv)
    options = {k: getattr(a, k) for k in ("max_texts_per_request", "default_top_k", "threads", "max_length",
                                          "max_text_chars") if getattr(a, k) is not None}
    if hasattr(a, "chunk_size"):  # given, possibly as "none" (None: one pass), which must reach the YAML
        options["chunk_size"] = a.chunk_size
    if a.profile:
        options["profile"] = True
    return ArchiveConfig(bundle=a.bundle, name=a.name, version=a.version, store=a.store, batch_size=a.batch_size,
                         max_batch_delay=a.max_batch_delay, min_workers=a.min_workers, max_workers=a.max_workers,
                         response_timeout=a.response_timeout, handler=options, force=a.force)


def cli(argv=None) -> int:
    try:
        main(parse_args(argv))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ArchiverFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(cli())
