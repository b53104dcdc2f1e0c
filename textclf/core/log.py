"""One logging set-up for every command: one format, a level chosen by --quiet/--verbose."""
from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
# Libraries that log every step at INFO (ONNX export, HTTP connections); ours stay at the chosen level.
CHATTY = ("onnxscript", "onnx_ir", "torch.onnx", "urllib3", "filelock", "httpx", "matplotlib", "optuna")


def level_for(verbosity: int) -> int:
    """-1 (--quiet): warnings and errors; 0: our INFO lines; 1 (--verbose): DEBUG."""
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.WARNING)


def setup(verbosity: int = 0) -> None:
    """Configure the root logger once per process (a second call only changes the level). Only the first
    process of a torchrun launch logs INFO; the others would repeat every line."""
    level = level_for(verbosity)
    if os.environ.get("RANK", "0") != "0":
        level = max(level, logging.WARNING)
    root = logging.getLogger()
    if not any(getattr(h, "_textclf", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler._textclf = True
        root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING) if verbosity <= 0 else level)
