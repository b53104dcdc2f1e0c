"""One simulated feedback cycle on rt-polarity: serve v1, capture live traffic, review it, retrain, gate.

    python -m bench.feedback_bench [--data-root ../shared/data] [--runs runs/bench/feedback]   (= make bench-feedback)

1. rt-polarity's train split is shuffled (seeded) and halved: v1 trains on half A with the default recipe
   (training.train, no flags), and is exported (training.export, fp32 TorchScript).
2. A temporary TorchServe serves v1 with review capture on (every text whose calibrated top-1 score is
   below `review_below`, plus a `review_sample` share of the others): half B is the live traffic, sent
   through the server in requests of 32 texts.
3. The review queue is reviewed by textclf.pipelines.review with scripted answers: the true label of each text.
4. textclf.pipelines.retrain trains the challenger on half A plus the reviewed feedback (20% of it held out),
   compares it with v1 on the untouched test split, and, through the gate, archives, registers and makes
   it the default on the same server.

Reported: v1's test ECE before and after temperature scaling, v1 vs v2 accuracy and macro-F1 on the test
split, how much traffic was captured, the gate's decision and the server's default version afterwards.
Targets: ECE after <= half of ECE before; v2 strictly better than v1 and promoted automatically. Writes
bench/results/feedback.{json,md} (feedback-smoke.* with --max-train-samples).
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import write_results
from handlers.checks import check_int
from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import option, run

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
ROOT = paths.ROOT
NAME = "feedback"


@dataclass
class FeedbackBenchConfig:
    """A simulated feedback cycle on rt-polarity: v1 on half the training data, the other half as live traffic
    with review capture, a scripted review, retraining and the promotion gate."""

    data_root: Path = option("folder holding rt-polarity/", ROOT.parent / "shared" / "data")
    runs: Path = option("where the benchmark's run directories go", Path("runs/bench/feedback"))
    review_below: float = option("capture every text whose calibrated top-1 score is below this", 0.9)
    review_sample: float = option("and this random share of the other texts", 0.1)
    max_train_samples: int | None = option("smoke-test on this many rows of each half", None)
    seed: int = option("seed of the halving", 13)

    def __post_init__(self):
        check_int("--max-train-samples", self.max_train_samples, 4, optional=True, error=UserError)
        if not (Path(self.data_root) / "rt-polarity" / "train.csv").exists():
            raise UserError(f"benchmark data not found under {self.data_root}; pass --data-root")
        if not (0 < self.review_below <= 1 and 0 <= self.review_sample <= 1):
            raise UserError("--review-below must be in (0, 1] and --review-sample in [0, 1]")


def halves(config: FeedbackBenchConfig, out: Path) -> tuple[Path, pd.DataFrame]:
    """v1's data folder (half A + the test split) and the traffic (half B, with its true labels)."""
    source = Path(config.data_root) / "rt-polarity"
    train = pd.read_csv(source / "train.csv").sample(frac=1.0, random_state=config.seed).reset_index(drop=True)
    a, b = train.iloc[: len(train) // 2], train.iloc[len(train) // 2:]
    if config.max_train_samples:
        a, b = a.head(config.max_train_samples), b.head(config.max_train_samples)
    folder = out / "data" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    a.to_csv(folder / "train.csv", index=False)
    pd.read_csv(source / "test.csv").to_csv(folder / "test.csv", index=False)
    return folder, b


def scripted_answers(records: list[dict], truth: dict[str, str]) -> io.StringIO:
    """What a careful reviewer types for each record, in order: the text's true label."""
    return io.StringIO("".join(f"{truth[r['text']]}\n" for r in records))


def cycle(config: FeedbackBenchConfig) -> dict:
    from textclf.pipelines import retrain
    from textclf.pipelines.review import read_queue, review
    from textclf.torchserve import temporary
    from textclf.torchserve.archive import ArchiveConfig, build_archive
    from textclf.torchserve.ops import Target
    from training.export import ExportConfig
    from training.export import main as export_main
    from training.rundir import RunDir
    from training.train import TrainConfig
    from training.train import main as train_main

    out = Path(config.runs)
    data, traffic = halves(config, out)
    timings, started = {}, time.perf_counter()
    v1 = train_main(TrainConfig(output_dir=str(out / "v1"), data=str(data), resume=False))
    timings["train_v1_s"] = round(time.perf_counter() - started, 1)
    export_main(ExportConfig(run_dir=str(out / "v1"), output_dir=str(out / "v1-export"), force=True))
    queue = out / "review" / "queue.jsonl"
    queue.parent.mkdir(parents=True, exist_ok=True)
    queue.unlink(missing_ok=True)  # a rerun reviews only its own traffic
    with temporary.temporary_server(prefix="feedback-") as running:
        archive = build_archive(ArchiveConfig(
            bundle=out / "v1-export", name=NAME, version="1.0", store=running.store,
            review={"review": True, "review_queue": str(queue.resolve()), "review_below": config.review_below,
                    "review_sample": config.review_sample}))
        rest = running.client()
        rest.register(NAME, archive.name, initial_workers=1)
        t0, texts = time.perf_counter(), traffic["text"].tolist()
        for i in range(0, len(texts), 32):
            rest.predict(NAME, texts=texts[i:i + 32])
        timings["traffic_s"] = round(time.perf_counter() - t0, 1)
        records = read_queue(queue)
        truth = dict(zip(traffic["text"], traffic["label"].astype(str), strict=False))
        feedback = out / "review" / "feedback.csv"
        feedback.unlink(missing_ok=True)
        counts = review(records, RunDir(out / "v1").read_labels(), feedback, scripted_answers(records, truth),
                        io.StringIO())
        t0 = time.perf_counter()
        report = retrain.main(retrain.RetrainConfig(
            run=out / "v1", feedback=feedback, output_dir=out / "v2", name=NAME, version="2.0",
            target=Target(config=running.cfg.effective_config(), state_dir=running.state_dir)))
        timings["retrain_s"] = round(time.perf_counter() - t0, 1)
        default = rest.describe(NAME)[0]["modelVersion"]
    calibration = v1["test"]["calibration"]
    return {
        "rows": {"v1_train": int(len(pd.read_csv(data / "train.csv"))), "traffic": len(traffic),
                 "captured": len(records), "reviewed": counts},
        "capture": {"review_below": config.review_below, "review_sample": config.review_sample},
        "ece": {"before": calibration["ece_before"], "after": calibration["ece_after"],
                "temperature": calibration.get("temperature")},
        "test": report["test"], "feedback_holdout": report["feedback_holdout"], "gate": report["gate"],
        "feedback": report["feedback"], "promoted": report.get("promoted"), "default_after": default,
        "timings": timings,
    }


def targets(r: dict) -> list[str]:
    ece, (v1, v2) = r["ece"], (r["test"]["champion"], r["test"]["challenger"])
    better = v2["macro_f1"] > v1["macro_f1"] and v2["accuracy"] > v1["accuracy"]
    return [f"ECE after <= half of before: {ece['before']:.4f} -> {ece['after']:.4f}, "
            f"{'met' if ece['after'] <= ece['before'] / 2 else 'missed'}",
            f"v2 strictly better than v1 (accuracy and macro-F1): {'met' if better else 'missed'}",
            f"v2 promoted automatically (the server's default afterwards: {r['default_after']}): "
            f"{'met' if r['default_after'] == '2.0' else 'missed'}"]


def markdown(r: dict) -> str:
    rows, test = r["rows"], r["test"]
    lines = [f"# Feedback cycle on rt-polarity ({r['cpu_class']} CPU, {r['finished']})", "",
             f"`{r['command']}`. v1: the default recipe on {rows['v1_train']} rows from one half of train. Live traffic: "
             f"{rows['traffic']} rows from the other half through TorchServe with review capture (calibrated top-1 below "
             f"{r['capture']['review_below']:g}, plus {100 * r['capture']['review_sample']:g}% of the rest): "
             f"{rows['captured']} captured, reviewed with their true labels ({rows['reviewed']['accepted']} accepted, "
             f"{rows['reviewed']['corrected']} corrected); {r['feedback']['used_for_training']} added to training, "
             f"{r['feedback']['held_out']} held out.", "",
             "| model | test accuracy | test macro-F1 | held-out feedback accuracy |", "| --- | --- | --- | --- |"]
    for who, label in (("champion", "v1"), ("challenger", "v2")):
        hold = r["feedback_holdout"][who]
        lines.append(f"| {label} | {100 * test[who]['accuracy']:.2f}% | {100 * test[who]['macro_f1']:.2f} | "
                     + (f"{100 * hold['accuracy']:.1f}% |" if hold.get("samples") else "- |"))
    gate = r["gate"]
    lines += ["", f"Gate: {'promote' if gate['promote'] else 'refuse'} (macro-F1 change "
              f"{gate['macro_f1_change_points']:+.2f} points{'; ' + '; '.join(gate['reasons']) if gate['reasons'] else ''}). "
              f"v1 test ECE {r['ece']['before']:.4f} before temperature scaling, {r['ece']['after']:.4f} after.", ""]
    lines += [f"- {t}" for t in targets(r)]
    t = r["timings"]
    lines += ["", f"Times: v1 training {t['train_v1_s']:.0f} s, traffic {t['traffic_s']:.0f} s, retraining and "
              f"promotion {t['retrain_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(config: FeedbackBenchConfig) -> dict:
    from bench.multilabel_bench import machine

    m = machine()
    result = {**cycle(config), "cpu_class": m["cpu_class"], "machine": m, "load_average_end": os.getloadavg(),
              "finished": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": "python -m bench.feedback_bench" + (f" --max-train-samples {config.max_train_samples}"
                                                             if config.max_train_samples else "")}
    write_results(RESULTS, "feedback" + ("" if config.max_train_samples is None else "-smoke"), result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(run(main, FeedbackBenchConfig, prog="python -m bench.feedback_bench", show=lambda r: markdown(r).rstrip()))
