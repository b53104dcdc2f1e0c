"""The Makefile documents itself: `make help` lists every target with its one-line description."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_help_lists_every_target():
    targets = re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^\s+(?:\x1b\[1m)?([a-z][a-z0-9-]*)", out, flags=re.M)
    assert sorted(listed) == sorted(set(targets)) and len(targets) > 20
    assert all(len(line.split(None, 2)) == 3 for line in out.splitlines() if line.startswith("  "))
