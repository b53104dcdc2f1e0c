"""What a TorchServe's logs say when something went wrong: the tail of its output, and the error a worker logged
(TorchServe itself answers only "Failed to start workers")."""
from __future__ import annotations

import os
import re
from pathlib import Path

OUT_FILE = "logs/torchserve.out"  # stdout/stderr of the launcher and the JVM


def log_tail(cfg, lines: int = 25) -> str:
    """The last lines of the JVM log or the launcher output of `cfg`'s state dir, whichever was written last."""
    written = [p for p in (cfg.state_dir / "logs/ts_log.log", cfg.state_dir / OUT_FILE) if p.exists() and p.stat().st_size]
    for path in sorted(written, key=lambda p: p.stat().st_mtime, reverse=True):
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return f"last lines of {path}:\n" + "\n".join(tail)
    return "(no log output)"


MODEL_LOG = "logs/model_log.log"


def log_size(state_dir: Path) -> int:
    """Current size of the workers' log, so a later worker_error() reads only what was written after."""
    try:
        return (Path(state_dir) / MODEL_LOG).stat().st_size
    except FileNotFoundError:
        return 0


def worker_error(state_dir: Path, name: str | None = None, version: str | None = None, since: int = 0) -> str | None:
    """The last exception line a worker of `name`/`version` (any, if None) logged after byte `since`.

    TorchServe answers a registration whose workers fail with a bare "Failed to start workers"; the
    reason (e.g. the handler's BundleError) is only in the workers' log. It never holds request text:
    the handler does not log any."""
    try:
        with open(Path(state_dir) / MODEL_LOG, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - (4 << 20)))  # the last 4 MiB at most
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    worker = rf"W-\d+-{re.escape(name)}_{re.escape(version or '')}" if name else r"W-\d+-\S+"
    if name and version is None:
        worker += r"\S*"
    pattern = re.compile(rf"{worker}-stdout MODEL_LOG - ((?:[\w.]+\.)?\w+(?:Error|Exception): .*)$", re.M)
    found = pattern.findall(text)
    return found[-1].strip() if found else None
