"""Why a bundle answers what it answers: each text with its words shaded by how much they weigh, by occlusion
(handlers/explanations.py; guide: docs/explanations.md).

    textclf explain runs/demo/export --text "where is my refund?" [--label refund_not_showing_up]
    textclf explain runs/demo/export --file tickets.txt --html explanations.html

Scores in this process with the bundle's own runtime, exactly as served (handlers/scoring.py): the label and its
score above each text, then the text with its words on a green background when they support the label (removing
them lowers its score) and red when they speak against it, the stronger the darker. Without a terminal (a pipe,
a file) or with NO_COLOR set, each word is followed by its weight in brackets instead. --html also writes one
self-contained page of every text, shaded the same way. Texts are never logged.
"""
from __future__ import annotations

import html
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from handlers.checks import check_int
from handlers.config import HandlerConfig
from handlers.explanations import explain, words_of
from handlers.scoring import Scorer
from textclf.core.errors import UserError
from textclf.core.files import write_atomically
from textclf.core.options import option, run

log = logging.getLogger(__name__)
SHADES = 5  # intensity steps of the terminal's backgrounds
FAINT = 0.1  # a text whose strongest word moves the score by less is shaded in proportion to this, not to it
# xterm-256 backgrounds from faint to strong, under black text: green supports the label, red speaks against it.
GREEN, RED = (194, 157, 120, 83, 46), (224, 217, 210, 203, 196)
BLACK_ON = "\x1b[38;5;16;48;5;{}m"
RESET = "\x1b[0m"
EXPLAIN_BATCH = 8  # texts per explain call (one call of the model per batch): bounds memory on a long file


@dataclass
class ExplainConfig:
    """Explain a bundle's answers: every word of each text weighed by occlusion, shaded in the terminal and, with
    --html, on a web page."""

    bundle: Path = option("the export bundle (training.export's output folder)", positional=True)
    text: str | None = option("a text to explain", None)
    file: Path | None = option("a text file of texts to explain, one per line (blank lines skipped)", None)
    label: str | None = option("explain this label rather than the prediction", None)
    html: Path | None = option("also write a self-contained HTML page of the explanations here", None)
    max_words: int = option("refuse texts with more words (each word costs one more prediction)",
                            HandlerConfig().explain_max_words)
    threads: int | None = option("torch threads (default: torch's own)", None)

    def __post_init__(self):
        if self.text is None and self.file is None:
            raise UserError("nothing to explain: pass --text TEXT and/or --file FILE")
        if not (Path(self.bundle) / "model_card.json").is_file():
            raise UserError(f"{self.bundle}: not an export bundle (no model_card.json)")
        if self.file is not None and not Path(self.file).is_file():
            raise UserError(f"--file {self.file}: not found")
        check_int("--max-words", self.max_words, 1, error=UserError)
        check_int("--threads", self.threads, 1, optional=True, error=UserError)


def read_texts(config: ExplainConfig) -> list[str]:
    texts = [] if config.text is None else [config.text]
    if config.file is not None:
        texts += [line for line in Path(config.file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"--file {config.file}: no texts in it")
    for i, text in enumerate(texts, 1):
        if len(words_of(text)) > config.max_words:
            raise UserError(f"text {i} has {len(words_of(text))} words, over --max-words {config.max_words} "
                            "(each word costs one more prediction; raise --max-words to explain it)")
    return texts


# ---------------------------------------------------------------- rendering (pure)

def explanations_of(result: dict) -> list[dict]:
    """The {"label", "score", "attributions"} of a result: one for single-label, one per explained label for
    multi-label."""
    return result["explanations"] if "explanations" in result else [result]


def strength(weight: float, attributions: list[dict]) -> float:
    """|weight| as a share of the explanation's strongest word (0 to 1), so shades compare the words of one text;
    but never of less than FAINT: where no word moves the score by much, every word stays faint."""
    top = max((abs(a["weight"]) for a in attributions), default=0.0)
    return abs(weight) / max(top, FAINT)


def heading(explanation: dict, result: dict) -> str:
    predicted = result.get("labels")
    also = "" if predicted is None else f"  (predicted: {', '.join(predicted) or 'none above its threshold'})"
    return f"{explanation['label']}  {explanation['score']:.3f}{also}"


def shade_terminal(text: str, attributions: list[dict], colour: bool) -> str:
    """The text with each word on its background (colour) or followed by its weight in brackets."""
    out, position = [], 0
    for a in attributions:
        out.append(text[position:a["start"]])
        word = text[a["start"]:a["end"]]
        if not colour:
            out.append(f"{word}[{a['weight']:+.3f}]")
        else:
            level = round(strength(a["weight"], attributions) * SHADES)
            out.append(word if level == 0 else
                       BLACK_ON.format((GREEN if a["weight"] > 0 else RED)[level - 1]) + word + RESET)
        position = a["end"]
    return "".join(out) + text[position:]


def terminal(explained: list[tuple[str, dict]], colour: bool) -> str:
    """Every text: its label and score, then the shaded text, indented."""
    lines = []
    for i, (text, result) in enumerate(explained, 1):
        for explanation in explanations_of(result):
            lines.append(f"[{i}] {heading(explanation, result)}")
            shaded = shade_terminal(text, explanation["attributions"], colour)
            lines += ["    " + line for line in shaded.splitlines() or [""]]
        lines.append("")
    if colour:
        lines.append(f"{BLACK_ON.format(GREEN[-1])} supports the label {RESET} "
                     f"{BLACK_ON.format(RED[-1])} speaks against it {RESET} (removing the word lowers / raises its score)")
    return "\n".join(lines).rstrip("\n")


def use_colour(stream=None, environ=None) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    stream, environ = stream or sys.stdout, os.environ if environ is None else environ
    return bool(getattr(stream, "isatty", lambda: False)()) and not environ.get("NO_COLOR")


def shade_html(text: str, attributions: list[dict]) -> str:
    out, position = [], 0
    for a in attributions:
        out.append(html.escape(text[position:a["start"]]))
        alpha = round(0.85 * strength(a["weight"], attributions), 3)
        kind = "against" if a["weight"] < 0 else "for"
        out.append(f'<span class="{kind}" style="--a:{alpha}" title="{a["weight"]:+.4f}">'
                   f'{html.escape(text[a["start"]:a["end"]])}</span>')
        position = a["end"]
    return "".join(out) + html.escape(text[position:])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 16px/1.6 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #111; }}
.text {{ margin: 0 0 1.5rem; padding: .75rem 1rem; border: 1px solid #ddd; border-radius: 6px; white-space: pre-wrap; }}
.head {{ font-weight: 600; margin-bottom: .25rem; }} .head small {{ font-weight: 400; color: #555; }}
span.for {{ background: rgba(22, 163, 74, var(--a)); border-radius: 3px; }}
span.against {{ background: rgba(220, 38, 38, var(--a)); border-radius: 3px; }}
.legend span {{ padding: 0 .4rem; --a: .7; }}
</style></head><body>
<h1>{title}</h1>
<p class="legend"><span class="for">supports the label</span> <span class="against">speaks against it</span>
the darker, the more: a word's weight is how much the label's score drops when the word is removed (negative: it
rises). Shades compare the words of one text (where no word moves the score by 0.1, all stay faint); hover a word
for its weight.</p>
{body}
</body></html>"""


def html_page(explained: list[tuple[str, dict]], title: str) -> str:
    """One self-contained page (no scripts, no external files) of every text and explanation, all text escaped."""
    blocks = []
    for i, (text, result) in enumerate(explained, 1):
        for explanation in explanations_of(result):
            predicted = result.get("labels")
            also = "" if predicted is None else (
                f" <small>predicted: {html.escape(', '.join(predicted) or 'none above its threshold')}</small>")
            blocks.append(f'<div class="text"><div class="head">[{i}] {html.escape(explanation["label"])} '
                          f'{explanation["score"]:.3f}{also}</div>{shade_html(text, explanation["attributions"])}</div>')
    return PAGE.format(title=html.escape(title), body="\n".join(blocks))


# ---------------------------------------------------------------- command

def main(config: ExplainConfig) -> list[tuple[str, dict]]:
    texts = read_texts(config)
    scorer = Scorer.load(Path(config.bundle), threads=config.threads)
    if config.label is not None and config.label not in scorer.labels:
        shown = ", ".join(scorer.labels[:10]) + (", ..." if len(scorer.labels) > 10 else "")
        raise UserError(f"--label {config.label!r} is not one of the model's labels ({shown})")
    started, results = time.perf_counter(), []
    for i in range(0, len(texts), EXPLAIN_BATCH):
        results += explain(texts[i: i + EXPLAIN_BATCH], scorer.probabilities, scorer.answers, config.label)
    log.info("explained %d texts (%d words) in %.1f s", len(texts), sum(len(words_of(t)) for t in texts),
             time.perf_counter() - started)
    explained = list(zip(texts, results, strict=True))
    if config.html is not None:
        write_atomically(config.html, [html_page(explained, f"Explanations: {config.bundle}")])
        log.info("wrote %s", config.html)
    return explained


def command(argv=None, prog="python -m textclf.pipelines.explain") -> int:
    return run(main, ExplainConfig, argv, prog=prog, show=lambda explained: terminal(explained, use_colour()))


if __name__ == "__main__":
    sys.exit(command())
