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
