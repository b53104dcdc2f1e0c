"""Label a review queue in the terminal: `python -m textclf.pipelines.review QUEUE --labels RUN_OR_BUNDLE [--out feedback.csv]`.

The queue is what review capture stored (handlers/capture.py: JSONL with the text, the model's answer and why it
was kept). Each text is shown with the model's best labels; the reviewer answers

    Enter / a     accept the model's answer             1-9  the n-th label shown
    a label name  the right label (any of the model's)  o    none of these: it fits none of the model's labels
    s             skip                                  q    save and quit

"None of these" is written with the model's out-of-scope label: the label a run learnt its out-of-scope examples
under (training's --out-of-scope-label), else --out-of-scope-label (default out_of_scope); `make retrain` then
learns those texts as out of scope. A text the model answered out of scope (the record's `out_of_scope`) is shown
as such, and Enter accepts it as "none of these".

Answers are appended to a feedback CSV (text,label), one line per answer as it is given, so a session can stop
at any point and the next one resumes after the texts already answered (or skipped: they are recorded in a
`.skipped` file beside it). A labelled CSV made elsewhere with the same two columns serves `make retrain` too.
Multi-label queues are not reviewed here: their feedback is a CSV with the labels joined by `|`.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from handlers.bundle import BundleError, read_card, read_labels
from handlers.config import HandlerConfig
from textclf.core.errors import UserError
from textclf.core.options import option, run
from training.rundir import RunDir

SHOWN = 5


@dataclass
class ReviewSessionConfig:
    """Label a review queue in the terminal; answers go to a feedback CSV (resumable)."""

    queue: Path = option("the review queue (JSONL written by review capture)", positional=True)
    labels: Path = option("the model's run directory or export bundle, for its label names")
    out: Path = option("the feedback CSV to append to", Path("feedback.csv"))
    out_of_scope_label: str | None = option(
        "the label 'o' (none of these) writes (default: the label the model learnt its out-of-scope examples "
        f"under, else {HandlerConfig.out_of_scope_label})", None)

    def __post_init__(self):
        if not Path(self.queue).is_file():
            raise UserError(f"{self.queue}: no such review queue")


def label_names(path: Path) -> list[str]:

    path = Path(path)
    try:
        return RunDir(path).read_labels() if (path / "run.json").is_file() else read_labels(path)
    except BundleError as e:
        raise UserError(str(e)) from None


def trained_out_of_scope(path: Path, labels: list[str]) -> str | None:
    """The label a model learnt its out-of-scope examples under, or None: a run's run.json names it; a bundle's
    card gives the class's index."""
    path = Path(path)
    try:
        if (path / "run.json").is_file():
            return (RunDir(path).read_run().get("out_of_scope") or {}).get("label")
        oos_class = (read_card(path).get("out_of_scope") or {}).get("oos_class")
    except BundleError as e:
        raise UserError(str(e)) from None
    return None if oos_class is None else labels[oos_class]


def out_of_scope_label(path: Path, labels: list[str], given: str | None) -> str:
    """What "none of these" is written as: `given`, else the model's own out-of-scope class (the next training
    learns more of the same class), else the label served answers carry out of scope."""
    trained = trained_out_of_scope(path, labels)
    if given is None:
        return trained or HandlerConfig.out_of_scope_label
    if given in labels and given != trained:  # "none of these" would read as that label
        raise UserError(f"--out-of-scope-label {given!r} is one of the model's in-scope labels")
    return given


def read_queue(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["text"], record["predicted"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a review record (JSON with text and predicted)") from None
        if isinstance(record["predicted"], list):
            raise UserError(f"{path}: multi-label records; review them as a labelled CSV (labels joined by '|')")
        records.append(record)
    return records


def already_done(out: Path) -> set[str]:
    done = set()
    if out.is_file():
        with open(out, newline="", encoding="utf-8") as f:
            done |= {row["text"] for row in csv.DictReader(f)}
    skipped = out.with_name(out.name + ".skipped")
    if skipped.is_file():
        done |= set(json.loads(line) for line in skipped.read_text(encoding="utf-8").splitlines() if line)
    return done


def model_answer(record: dict, out_of_scope: str) -> str:
    """The model's answer as feedback writes it: an answer out of scope is "none of these"."""
    return out_of_scope if record.get("out_of_scope") else record["predicted"]


def answer_of(reply: str, record: dict, shown: list[str], labels: list[str], out_of_scope: str) -> str | None:
    """The label a reply means, "skip", "quit", or None when it means nothing (asked again)."""
    reply = reply.strip()
    if reply in ("", "a"):
        return model_answer(record, out_of_scope)
    if reply == "o":
        return out_of_scope
    if reply in ("s", "q"):
        return {"s": "skip", "q": "quit"}[reply]
    if reply.isdigit() and 1 <= int(reply) <= len(shown):
        return shown[int(reply) - 1]
    return reply if reply in labels or reply == out_of_scope else None


def review(records: list[dict], labels: list[str], out: Path, read: TextIO = sys.stdin, write: TextIO = sys.stdout,
           out_of_scope: str = HandlerConfig.out_of_scope_label) -> dict:
    """Ask about each record not answered yet; `out_of_scope`: the label "none of these" is written as."""
    done = already_done(out)
    todo = [r for r in records if r["text"] not in done]
    counts = {"accepted": 0, "corrected": 0, "none_of_these": 0, "skipped": 0, "left": len(todo)}
    new_file = not out.is_file()
    skipped = out.with_name(out.name + ".skipped")
    with open(out, "a", newline="", encoding="utf-8") as f, open(skipped, "a", encoding="utf-8") as skips:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(["text", "label"])
        for i, record in enumerate(todo, start=1):
            expected = model_answer(record, out_of_scope)
            shown = list(record.get("scores", {}))[:SHOWN] or [expected]
            write.write(f"\n[{i}/{len(todo)}, {len(done) + i - 1} done before] {record['text']}\n")
            if record.get("out_of_scope"):
                score = f" (in-scope score {record['in_scope']:.2f})" if "in_scope" in record else ""
                write.write(f"  answered out of scope: none of the model's labels{score}; the nearest:\n")
            write.write("  " + "   ".join(f"{n}) {name} {record.get('scores', {}).get(name, 0):.2f}"
                                          for n, name in enumerate(shown, start=1)) + "\n")
            while True:
                enter = "none of these" if expected == out_of_scope else expected
                write.write(f"label [Enter: {enter}, 1-{len(shown)}, a name, o none of these, s skip, q quit]: ")
                write.flush()
                line = read.readline()
                choice = "quit" if line == "" else answer_of(line, record, shown, labels, out_of_scope)
                if choice is not None:
                    break
                write.write("  not one of the model's labels\n")
            if choice == "quit":
                break
            counts["left"] -= 1
            if choice == "skip":
                skips.write(json.dumps(record["text"]) + "\n")
                counts["skipped"] += 1
                continue
            writer.writerow([record["text"], choice])
            f.flush()  # every answer is on disk as soon as it is given
            # "none of these" counts the texts the model gave one of its labels; one it answered out of scope is accepted.
            counts["accepted" if choice == expected else "none_of_these" if choice == out_of_scope else "corrected"] += 1
    write.write(f"\n{counts['accepted']} accepted, {counts['corrected']} corrected, {counts['none_of_these']} none of "
                f"these, {counts['skipped']} skipped, {counts['left']} left; feedback in {out}\n")
    return counts


def main(config: ReviewSessionConfig) -> dict:
    labels = label_names(config.labels)
    return review(read_queue(config.queue), labels, Path(config.out),
                  out_of_scope=out_of_scope_label(config.labels, labels, config.out_of_scope_label))


def command(argv=None, prog="python -m textclf.pipelines.review") -> int:
    return run(main, ReviewSessionConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
