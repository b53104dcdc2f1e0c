"""Benchmarks: each module is one `make bench-*` target; results go to bench/results/ (committed)."""
from __future__ import annotations

import json
from pathlib import Path


def write_results(out_dir: Path, stem: str, result: dict, markdown: str) -> None:
    """`stem`.json (everything measured) and `stem`.md (the table the READMEs quote), side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
