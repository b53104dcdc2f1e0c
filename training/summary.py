"""Print a run's evaluation headline: `python -m training.summary runs/NAME`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from training.report import label_rows


def summary(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test, train = metrics["test"], metrics["train"]
    lines = [f"test: accuracy {100 * test['accuracy']:.1f}%, macro-F1 {100 * test['macro_f1']:.1f} on {test['samples']} texts "
             f"(validation accuracy {100 * metrics['validation']['accuracy']:.1f}%)",
             f"training: {train['examples']} examples, {train['steps']} steps, {train['seconds']:.0f} s, "
             + (f"{train['samples_per_second']:.1f} samples/s" if train.get("samples_per_second") else "resumed"),
             f"{'label':<24} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}"]
    per_class = label_rows(test["per_class"])
    for name, row in list(per_class.items())[:20]:
        lines.append(f"{name:<24} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1-score']:>6.3f} {int(row['support']):>8}")
    if len(per_class) > 20:
        lines.append(f"... {len(per_class) - 20} more labels in {run_dir / 'report' / 'report.json'}")
    for pair in test.get("top_confusions", [])[:3]:
        lines.append(f"most confused: {pair['true']} -> {pair['predicted']} ({pair['count']}x)")
    lines.append(f"report: {run_dir / 'report'} (confusion_matrix.png, misclassified.csv)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "metrics.json").exists():
        sys.exit("usage: python -m training.summary RUN_DIR  (a finished training run with metrics.json)")
    print(summary(Path(sys.argv[1])))
