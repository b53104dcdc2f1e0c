"""Where the project's own files are: the one place that knows the checkout's layout.

The server's configuration (config.properties, config.locked.properties, log4j2.xml), the
archive template (model-archive/model-config.yaml) and the default state of `textclf serve` (key_file.json,
logs/, the model store) live at the root of the checkout that `make install` / `pip install -e .` installed,
so every command finds them from any working folder.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_CONFIG = ROOT / "config.properties"
LOCKED_CONFIG = ROOT / "config.locked.properties"
# INFO instead of DEBUG, each line logged once, rotated files (see the file's header).
LOG_CONFIG = ROOT / "log4j2.xml"
MODEL_CONFIG_TEMPLATE = ROOT / "model-archive" / "model-config.yaml"
MODEL_STORE = ROOT / "model-archive" / "store"
MODELS = ROOT / "models"


def missing(path: Path) -> str:
    """Why one of the checkout's files is not there: a copy installed without its checkout (`pip install .`
    copies the packages alone) has none of them."""
    if Path(path).resolve().is_relative_to(ROOT) and not (ROOT / "pyproject.toml").is_file():
        return (f"{path} not found: textclf reads it from the checkout it is installed from; install it with "
                "`pip install -e .` in a clone of the repository")
    return f"{path} not found"
