"""Retrain with reviewed feedback, and promote the challenger only if it is better.

    python -m textclf.pipelines.retrain --run runs/current --feedback feedback.csv --output-dir runs/next
                               [--name NAME --version 2.0]    (make retrain RUN= FEEDBACK= NAME= VERSION=)

1. The champion's training data is reloaded as it was (same options, same seed; its fingerprint must match
   run.json, else the data changed underneath and the comparison would be meaningless).
2. The feedback (a CSV with text,label: textclf.pipelines.review's output or any labelled file) is checked against the
   champion's labels plus the out-of-scope label (texts that fit none of them: the review's "none of these";
   --out-of-scope-label, default the label the champion learnt them under, else out_of_scope) and deduplicated;
   texts that are in the test split are dropped from it (the test split stays untouched), and a seeded slice of
   it is held out for evaluation.
3. The challenger is trained with the champion's recipe on train + the rest of the feedback; where a text is in
   both, the feedback's label wins. Same validation and test splits. When the champion learnt an out-of-scope
   class or the feedback trained on has out-of-scope rows, the challenger learns them as its out-of-scope class
   (training's --out-of-scope-label), never as an intent.
4. Both models are evaluated on the test split and on the held-out feedback as they would be served: each with
   its own labels and calibration, a text its out-of-scope detector (or class) rejects answered out of scope;
   F1 is over the champion's in-scope labels, and the out-of-scope recall is reported where a split has such
   texts. report/comparison.{json,md} in the challenger's run directory says what was measured and what the
   gate decided.
5. The gate: the challenger's test macro-F1 is not lower than the champion's (less --tolerance points), and no
   in-scope label's test F1 drops by more than --max-label-drop points. With --name and --version, a challenger that
   passes is exported, archived as that version, registered and made the default; one that fails changes
   nothing on the server. Rolling back stays `make set-default`. Single-label runs only.

The command prints the comparison and ends with one line saying what it did (also logged, and kept as `outcome` in
comparison.json): "promoted: registered NAME VERSION ... and made it the default version (was OLD; roll back
with ...)", "gate passed; not promoted: no --name and --version given (compare only)", or "gate failed: kept the
champion ...; nothing changed on the server".
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from textclf.core.errors import Failure, UserError
from textclf.core.options import option, run
from textclf.pipelines.review import out_of_scope_label, trained_out_of_scope
from textclf.torchserve import ops
from textclf.torchserve.archive import ArchiveConfig, build_archive
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.ops import Target
from training import train
from training.data import load_splits
from training.out_of_scope import decided_oos
from training.report import predict_outputs
from training.rundir import RunDir
from training.train import TrainConfig

log = logging.getLogger(__name__)
# The champion's recipe: everything about how to train, nothing about where the data or the run are.
RECIPE = ("model", "epochs", "max_steps", "max_length", "batch_size", "eval_batch_size", "learning_rate",
          "weight_decay", "warmup_fraction", "grad_accum", "class_weights", "seed", "early_stopping_patience",
          "evals_per_epoch", "group_by_length", "precision", "out_of_scope_detector", "in_scope_coverage")


@dataclass
class RetrainConfig:
    """Train a challenger on the champion's data plus reviewed feedback; promote it only if the gate passes."""

    run: Path = option("the champion's run directory")
    feedback: Path = option("labelled feedback CSV (text,label)")
    output_dir: Path = option("the challenger's run directory")
    holdout_fraction: float = option("share of the feedback held out to evaluate both models on", 0.2)
    tolerance: float = option("the challenger's test macro-F1 may be this many points below the champion's", 0.0)
    max_label_drop: float = option("refuse a challenger that loses more than this many F1 points on any label", 5.0)
    name: str | None = option("promote: the served model's name (with --version)", None)
    version: str | None = option("promote: the version to archive, register and make default", None)
    max_steps: int | None = option("override the champion's --max-steps (quick runs)", None)
    out_of_scope_label: str | None = option(
        "the feedback's label for texts that fit none of the labels, learnt as out-of-scope examples (default: the "
        "label the champion learnt them under, else out_of_scope)", None)
    target: Target = option("promote: the server", default_factory=Target)

    def __post_init__(self):
        RunDir(self.run).check_finished()
        if not Path(self.feedback).is_file():
            raise UserError(f"--feedback {self.feedback}: no such file")
        if not 0 <= self.holdout_fraction < 1:
            raise UserError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.tolerance < 0 or self.max_label_drop < 0:
            raise UserError("--tolerance and --max-label-drop must be >= 0")
        if (self.name is None) != (self.version is None):
            raise UserError("promotion needs both --name and --version (or neither, to compare only)")


def read_feedback(path: Path, labels: list[str], out_of_scope: str | None = None) -> pd.DataFrame:
    """The feedback's text,label rows; a label is one of `labels` or `out_of_scope` (none of them)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    if not {"text", "label"} <= set(frame.columns):
        raise UserError(f"{path}: needs columns text,label; has {list(frame.columns)}")
    frame = frame[["text", "label"]]
    unknown = sorted(set(frame["label"]) - set(labels) - {out_of_scope})
    if unknown:
        raise UserError(f"{path}: labels {unknown[:5]} are not the model's ({labels[:5]}...)")
    return frame[frame["text"].str.strip() != ""].drop_duplicates("text", keep="last")  # the last answer wins


def merge(train: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Train plus feedback, one row per text; the feedback's label wins where both have a text."""
    kept = train[~train["text"].isin(set(feedback["text"]))]
    return pd.concat([kept[["text", "label"]], feedback], ignore_index=True)


@dataclass(frozen=True)
class Measured:
    """What both models are measured against: the champion's in-scope labels (the F1s are over them, so the
    challenger's out-of-scope class never enters the gate) and the label of texts that fit none of them."""

    in_scope: list[str]
    out_of_scope: str


def scores(run_dir: Path, frame: pd.DataFrame, labels: Measured) -> dict:
    """Accuracy, macro-F1 and per-label F1 of a run's model on `frame` (text, label), answered as served: a text
    the run's detector (or out-of-scope class) rejects is answered `labels.out_of_scope`; a run trained before
    detection answers its argmax. With out-of-scope texts in `frame`, also the share of them answered so."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # lazy: `--help` need not load it

    from handlers.long_texts import CARD_KEY as LONG_TEXTS  # lazy: it loads torch
    from handlers.long_texts import policy_from_section
    from training.export import read_detector, run_problem  # lazy: they load torch
    from training.features import with_features

    if frame.empty:
        return {"samples": 0}
    rd = RunDir(run_dir)
    run, own = rd.read_run(), rd.read_labels()  # its own: a challenger may have one label more, ids shifted
    model = AutoModelForSequenceClassification.from_pretrained(rd.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(rd.model_dir)
    problem = run_problem(run_dir, own)  # with the served temperature: max_prob detection reads calibrated scores
    policy = policy_from_section(run.get(LONG_TEXTS), problem.name, rd.run_file)  # as the run evaluated, and serves
    probs, features = predict_outputs(with_features(model), tokenizer, frame["text"].tolist(), int(run["max_length"]),
                                      64, activation=problem.probabilities, policy=policy)
    decided = problem.decide(probs)
    rejected = np.zeros(len(frame), dtype=bool)
    detector = read_detector(run_dir, run)
    if detector is not None:
        rejected = (detector.in_scope(probs, features) < detector.threshold) | decided_oos(decided, detector.oos_class)
    truth = frame["label"].to_numpy(dtype=object)
    pred = np.where(rejected, labels.out_of_scope, np.asarray(own, dtype=object)[decided])
    per_label = f1_score(truth, pred, labels=labels.in_scope, average=None, zero_division=0)
    result = {"samples": len(frame), "accuracy": float(accuracy_score(truth, pred)),
              "macro_f1": float(f1_score(truth, pred, labels=labels.in_scope, average="macro", zero_division=0)),
              "per_label_f1": {name: float(f) for name, f in zip(labels.in_scope, per_label, strict=True)}}
    outside = truth == labels.out_of_scope
    if outside.any():
        result.update(out_of_scope_texts=int(outside.sum()),
                      out_of_scope_recall=float((pred[outside] == labels.out_of_scope).mean()))
    return result


def gate(champion: dict, challenger: dict, tolerance: float, max_label_drop: float) -> dict:
    """Promote only if test macro-F1 holds (within tolerance) and no label's F1 drops by more than the margin."""
    reasons = []
    change = 100 * (challenger["macro_f1"] - champion["macro_f1"])
    if change < -tolerance:
        reasons.append(f"test macro-F1 {100 * challenger['macro_f1']:.2f} is {-change:.2f} points below the "
                       f"champion's {100 * champion['macro_f1']:.2f} (tolerance {tolerance:g})")
    drops = {name: 100 * (f - challenger["per_label_f1"][name]) for name, f in champion["per_label_f1"].items()}
    worst = {name: d for name, d in drops.items() if d > max_label_drop}
    if worst:
        reasons.append("F1 drops beyond " + f"{max_label_drop:g} points on " +
                       ", ".join(f"{name} (-{d:.1f})" for name, d in sorted(worst.items(), key=lambda kv: -kv[1])[:5]))
    return {"promote": not reasons, "macro_f1_change_points": round(change, 3), "reasons": reasons,
            "largest_label_drop_points": round(max(drops.values()), 3) if drops else 0.0}


def markdown(report: dict) -> str:
    lines = ["# Champion vs challenger", "", f"champion `{report['champion']}`, challenger `{report['challenger']}`, "
             f"feedback `{report['feedback']['file']}`: {report['feedback']['used_for_training']} texts trained on, "
             f"{report['feedback']['held_out']} held out, {report['feedback']['dropped_in_test']} dropped (in the test split).",
             "", "| split | model | texts | accuracy | macro-F1 |", "| --- | --- | ---: | ---: | ---: |"]
    for split in ("test", "feedback_holdout"):
        for who in ("champion", "challenger"):
            s = report[split][who]
            if s.get("samples"):
                lines.append(f"| {split} | {who} | {s['samples']} | {100 * s['accuracy']:.2f}% | {100 * s['macro_f1']:.2f} |")
    for split in ("test", "feedback_holdout"):
        champion, challenger = report[split]["champion"], report[split]["challenger"]
        if "out_of_scope_recall" in champion:
            lines += ["", f"Out-of-scope recall on {split} ({champion['out_of_scope_texts']} texts that fit none of "
                      f"the labels): champion {100 * champion['out_of_scope_recall']:.1f}%, challenger "
                      f"{100 * challenger['out_of_scope_recall']:.1f}%."]
    g = report["gate"]
    lines += ["", f"Gate: **{'promote' if g['promote'] else 'keep the champion'}** (macro-F1 change "
              f"{g['macro_f1_change_points']:+.2f} points, largest label drop {g['largest_label_drop_points']:.2f})."]
    lines += [f"- {r}" for r in g["reasons"]]
    if "outcome" in report:
        lines += ["", report["outcome"]]
    return "\n".join(lines) + "\n"


def default_version(name: str, target: Target) -> str | None:
    """The version unversioned requests reach now; None if the model is not registered (or cannot be described)."""
    try:
        (described,) = ops.main(ops.ModelsConfig(name=name, version=None, target=target))
        return described.get("modelVersion")
    except (TorchServeError, ValueError, TypeError):
        return None


def promote(config: RetrainConfig, out: Path) -> dict:
    """Export, archive, register and make default the challenger; the archive plans what the champion's did.
    A step that fails says which steps were done before it."""
    from training.export import ExportConfig  # lazy: it loads torch and the export toolchain
    from training.export import main as export_main

    name, version, target = config.name, config.version, config.target
    export_main(ExportConfig(run_dir=str(out), output_dir=str(out / "export"), force=True))
    archive = build_archive(ArchiveConfig(bundle=out / "export", name=name, version=version, store=target.model_store()))
    previous = default_version(name, target)
    try:
        registered = ops.main(ops.RegisterConfig(name=name, version=version, target=target))
    except (UserError, Failure) as e:
        error = UserError if isinstance(e, UserError) else Failure
        raise error(f"the gate passed and {archive} was built, but registering {name} {version} failed: {e}") from None
    try:
        ops.main(ops.SetDefaultConfig(name=name, version=version, target=target))
    except (UserError, Failure) as e:
        error = UserError if isinstance(e, UserError) else Failure
        raise error(f"registered {name} {version}, but making it the default failed (unversioned requests still reach "
                    f"{previous or 'the previous default'}): {e}") from None
    return {"archive": str(archive), "name": name, "version": version, "default": True, "previous_default": previous,
            "workers": registered.get("workers") if isinstance(registered, dict) else None}


def outcome(report: dict, config: RetrainConfig) -> str:
    """One line: what the retrain did on the server, or why it did nothing there."""
    if not report["gate"]["promote"]:
        reasons = "; ".join(report["gate"]["reasons"])
        return f"gate failed: kept the champion ({reasons}); nothing changed on the server"
    if "promoted" not in report:
        return "gate passed; not promoted: no --name and --version given (compare only)"
    p = report["promoted"]
    workers = f", {p['workers']} worker(s) READY" if p.get("workers") is not None else ""
    line = f"promoted: registered {p['name']} {p['version']} ({p['archive']}{workers}) and made it the default version"
    previous = p.get("previous_default")
    if previous and previous != p["version"]:
        line += (f" (was {previous}; roll back with `textclf set-default --name {p['name']} --version {previous}`"
                 f" or `make set-default NAME={p['name']} VERSION={previous}`)")
    return line


def write_report(report: dict, out: Path) -> None:
    report_dir = RunDir(out).report_dir
    (report_dir / "comparison.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (report_dir / "comparison.md").write_text(markdown(report))


def main(config: RetrainConfig) -> dict:
    champion, out = RunDir(config.run), Path(config.output_dir)
    meta = champion.read_run()
    if meta.get("problem_type", "single_label_classification") != "single_label_classification":
        raise UserError(f"{config.run}: retraining with feedback supports single-label runs")
    old = meta["config"]
    splits = load_splits(old["data"], old["text_column"], old["label_column"], seed=old["seed"],
                         validation_fraction=old["validation_fraction"], max_train_samples=old["max_train_samples"],
                         max_eval_samples=old["max_eval_samples"])
    if splits.fingerprint != meta["data"]["fingerprint"]:
        raise UserError(f"the champion's data {old['data']} changed since it was trained (fingerprint differs): "
                        "retrain from the data it was trained on")
    labels = champion.read_labels()
    trained = trained_out_of_scope(champion.path, labels)  # the champion's out-of-scope class, if it learnt one
    given = out_of_scope_label(champion.path, labels, config.out_of_scope_label)
    oos = trained or given  # one out-of-scope class: the feedback's rows join the one the champion learnt
    feedback = read_feedback(config.feedback, labels, given).replace({"label": {given: oos}})
    in_test = feedback["text"].isin(set(splits.test["text"]))
    feedback = feedback[~in_test]
    rng = np.random.default_rng(old["seed"])
    held = rng.random(len(feedback)) < config.holdout_fraction
    holdout, extra = feedback[held], feedback[~held]

    data_dir = out / "data" / "retrain"
    data_dir.mkdir(parents=True, exist_ok=True)
    merge(splits.train, extra).to_csv(data_dir / "train.csv", index=False)
    splits.validation[["text", "label"]].to_csv(data_dir / "validation.csv", index=False)
    splits.test[["text", "label"]].to_csv(data_dir / "test.csv", index=False)
    recipe = {k: old[k] for k in RECIPE if k in old}
    if config.max_steps is not None:
        recipe["max_steps"] = config.max_steps
    # Out-of-scope texts are learnt as the out-of-scope class, never as one more intent.
    learns_oos = trained is not None or bool((extra["label"] == oos).any())
    if learns_oos and recipe.get("out_of_scope_detector") == "none":
        log.warning("the feedback has out-of-scope texts: the challenger gets the default detector (the champion had none)")
        del recipe["out_of_scope_detector"]
    valid = {f.name for f in fields(TrainConfig)}
    train.main(TrainConfig(**{k: v for k, v in recipe.items() if k in valid}, output_dir=str(out), data=str(data_dir),
                           out_of_scope_label=oos if learns_oos else None, resume=False, progress=False))

    models = (("champion", champion.path), ("challenger", out))
    measured = Measured([name for name in labels if name != trained], oos)
    report = {"champion": str(champion.path), "challenger": str(out),
              "feedback": {"file": str(config.feedback), "used_for_training": len(extra), "held_out": len(holdout),
                           "dropped_in_test": int(in_test.sum()), "out_of_scope_label": oos,
                           "out_of_scope_used_for_training": int((extra["label"] == oos).sum()),
                           "out_of_scope_held_out": int((holdout["label"] == oos).sum())},
              "challenger_learnt_out_of_scope": learns_oos,
              "test": {who: scores(path, splits.test, measured) for who, path in models},
              "feedback_holdout": {who: scores(path, holdout, measured) for who, path in models},
              "settings": {k: getattr(config, k) for k in ("holdout_fraction", "tolerance", "max_label_drop")}}
    report["gate"] = gate(report["test"]["champion"], report["test"]["challenger"], config.tolerance, config.max_label_drop)
    write_report(report, out)  # the comparison stays, whatever promoting does
    if report["gate"]["promote"] and config.name:
        report["promoted"] = promote(config, out)
    report["outcome"] = outcome(report, config)
    log.info("%s", report["outcome"])
    write_report(report, out)
    return report


def command(argv=None, prog="python -m textclf.pipelines.retrain") -> int:
    return run(main, RetrainConfig, argv, prog=prog, show=markdown)


if __name__ == "__main__":
    sys.exit(command())
