"""Files written whole or not at all: into a temporary file beside the target, then renamed over it, so a reader
(or a command run again after a crash) never sees half a file."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` (each ended with a newline) to `path`; on any failure `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
