"""Print a run's evaluation headline: `python -m training.summary runs/NAME`."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from textclf.core.options import option, run
from training.baselines import NAMES
from training.out_of_scope import describe
from training.problems import MULTI, problem_for
from training.report import label_rows, shorten
from training.rundir import RunDir

SHOWN_LABELS = 20


def summary(run_dir: Path) -> str:
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    test, train = metrics["test"], metrics["train"]
    per_class = label_rows(test["per_class"])
    shown = list(per_class.items())[:SHOWN_LABELS]
    # The label column fits the longest shown name, up to a cap past which names are cut.
    width = max([len("label")] + [len(shorten(name)) for name, _ in shown])
    problem = problem_for(metrics.get("problem_type") == MULTI, len(per_class))
    lines = [f"test: {problem.describe(test)}",
             *baseline_lines(problem, test),
             *out_of_scope_lines(test),
             f"validation: {problem.describe(metrics['validation'])}",
             f"training: {train['examples']} examples, {train['steps']} steps, {train['seconds']:.0f} s, "
             + (f"{train['samples_per_second']:.1f} samples/s" if train.get("samples_per_second") else "resumed")
             + (f", {train['epochs']:g} epochs run (the best evaluation kept)" if "epochs" in train else "")
             + (f"; refit on train + validation for {train['refit']['epochs']:g} epochs" if "refit" in train else ""),
             f"{'label':<{width}} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}"]
    for name, row in shown:
        lines.append(f"{shorten(name):<{width}} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1-score']:>6.3f} "
                     f"{int(row['support']):>8}")
    if len(per_class) > SHOWN_LABELS:
        lines.append(f"... {len(per_class) - SHOWN_LABELS} more labels in {run.report_dir / 'report.json'}")
    for pair in test.get("top_confusions", [])[:3]:
        lines.append(f"most confused: {pair['true']} -> {pair['predicted']} ({pair['count']}x)")
    lines += teacher_lines(run, problem, test)
    lines.append(f"report: {run.report_dir} ({', '.join(sorted(p.name for p in run.report_dir.iterdir()))})")
    return "\n".join(lines)


def baseline_lines(problem, test: dict) -> list[str]:
    """The baselines on the same test split under the model's figures, and a line for each the model does not
    beat (with its likely cause)."""
    found, judged = test.get("baselines"), test.get("baseline_verdict")
    if not found or not judged:
        return ["baselines: none recorded (the run was trained before they were computed)"]
    lines = [f"baseline {NAMES[name]}: {problem.describe(found[name])} "
             f"(the model {judged['margin_points'][name]:+.1f} {judged['metric']} points)"
             for name in NAMES if name in found]
    return lines + judged["lines"]


def out_of_scope_lines(test: dict) -> list[str]:
    """The out-of-scope detector the run fitted (training/out_of_scope.py), its rule and its test figures."""
    found = test.get("out_of_scope")
    if not found:
        return []
    return [f"out of scope: {found['detector']} detector, threshold {found['threshold']:.3f} ({found['rule']}); "
            f"test: {describe(found['test'])}"]


def teacher_lines(run: RunDir, problem, test: dict) -> list[str]:
    """A distilled run (training.distill): its test headline next to its teacher's."""
    distilled = run.read_run().get("distillation") if run.run_file.is_file() else None
    if not distilled:
        return []
    teacher = RunDir(distilled["teacher"])
    if not teacher.metrics_file.is_file():
        return [f"student vs teacher: teacher run {teacher.path} is gone"]
    return [f"student vs teacher ({distilled['teacher_model']}, {teacher.path}): "
            f"{problem.describe(test)} vs {problem.describe(teacher.read_metrics()['test'])}"]


@dataclass
class SummaryConfig:
    """Print a finished training run's evaluation headline."""

    run_dir: Path = option("a finished training run (training.train's --output-dir)", positional=True)


def main(config: SummaryConfig) -> str:
    return summary(Path(config.run_dir))


def command(argv=None, prog="python -m training.summary") -> int:
    return run(main, SummaryConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
