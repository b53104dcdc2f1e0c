"""Why did the model answer that? One weight per word, by occlusion.

Each word of a text is removed in turn and the text scored again; a word's weight is how much the explained
label's calibrated probability drops without it (original minus variant: positive when the word supports the
label, negative when removing it raises the label's probability). Weights come with the word's character offsets
into the original text, so a UI can shade the words where the client shows them.

Occlusion rather than gradients: it needs only the probabilities the model serves, so it works the same for every
runtime the handler serves (TorchScript fp32, bf16 and int8, ONNX Runtime), none of which keeps the graph a
gradient would need, and it explains exactly the answer /predictions gives. Its cost is one more text per word:
the originals and every variant of a request go through the model in ONE batched call, so a request of n texts
of w words costs about n * (w + 1) texts, linear in words (the handler caps both: explain_max_words,
explain_max_texts).

What is explained:
    single-label  the predicted label, or the label the request names
    multi-label   each predicted label (those at or above their threshold, best first); the highest-scoring
                  label when none passes; or the label the request names

Explanations, like request texts, are never logged and never captured for review (shapes only).
"""
from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from handlers.answers import MultiLabelAnswers, SingleLabelAnswers

logger = logging.getLogger(__name__)

# Inside a word, between two letters or digits: apostrophes (don't, l'amour) and hyphens (well-known, e-mail);
# between two digits also a decimal point or a thousands separator (3.50, 1,000): one word, one weight.
WORD_JOINERS = frozenset("'\u2019-\u2010\u2011")
NUMBER_JOINERS = frozenset(".,")
CLOSING = frozenset(",.;:!?)]}\u2026")  # punctuation that follows a word without a space
WEIGHT_DECIMALS = 4


@dataclass(frozen=True)
class Word:
    """A span of the original text: text[start:end] == self.text (offsets count Python characters)."""

    text: str
    start: int
    end: int


def _starts_word(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"  # letters and digits of any script


def _continues_word(ch: str) -> bool:
    # Combining marks (accents in decomposed text, the vowel signs of Indic scripts) belong to the word they follow.
    return unicodedata.category(ch)[0] in "LNM"


def words_of(text: str) -> list[Word]:
    """The words an explanation weighs, in text order: runs of letters, digits and combining marks of any script,
    with inner apostrophes and hyphens (and decimal points between digits). Punctuation, symbols, emoji and `_`
    are not words. Scripts written without spaces (Chinese, Japanese, Thai) come out as long runs: one weight per
    run. One pass over the text."""
    words, i, n = [], 0, len(text)
    while i < n:
        if not _starts_word(text[i]):
            i += 1
            continue
        start = i
        i += 1
        while i < n:
            if _continues_word(text[i]):
                i += 1
            elif i + 1 < n and _starts_word(text[i + 1]) and (
                    text[i] in WORD_JOINERS or (text[i] in NUMBER_JOINERS and text[i - 1].isdigit()
                                                and text[i + 1].isdigit())):
                i += 2
            else:
                break
        words.append(Word(text[start:i], start, i))
    return words


def _join(left: str, right: str) -> str:
    """Two pieces of text around a removed word: one run of whitespace at the gap, none at either end, none
    before punctuation that closes ("a refund now." without "now" is "a refund.")."""
    if not left.strip():  # the text so far is gone: it starts with what follows
        return right.lstrip()
    if not right.strip():  # nothing follows yet: keep a line break or other ending, not the gap's spaces
        return left.rstrip() + right.lstrip(" \t")
    if left[-1].isspace() and (right[0].isspace() or right[0] in CLOSING):
        return left.rstrip() + right  # the right side's whitespace, which may be a line break, stays
    return left + right


def without(text: str, words: Sequence[Word]) -> str:
    """`text` with these words (spans of words_of(text)) removed, and the whitespace around each gap tidied so no
    double space is left where a word was: the one occlusion operation, of explain and of the faithfulness bench.
    Whitespace elsewhere in the text is left as it was."""
    spans = sorted(words, key=lambda w: w.start)
    if not spans:
        return text
    out = text[: spans[0].start]
    for word, following in zip(spans, [*spans[1:], None], strict=True):
        out = _join(out, text[word.end: len(text) if following is None else following.start])
    return out


def _attributions(words: list[Word], drops: list[float]) -> list[dict]:
    # + 0.0 turns a rounded -0.0 into 0.0: a client should not see a "negative" weight of nothing.
    return [{"text": w.text, "start": w.start, "end": w.end, "weight": round(d, WEIGHT_DECIMALS) + 0.0}
            for w, d in zip(words, drops, strict=True)]


def _explained(labels: list[str], original: list[float], variants: list[list[float]], words: list[Word],
               label: str) -> dict:
    j = labels.index(label)
    return {"label": label, "score": original[j],
            "attributions": _attributions(words, [original[j] - v[j] for v in variants])}


def explain(texts: Sequence[str], probabilities: Callable[[list[str]], torch.Tensor],
            answers: SingleLabelAnswers | MultiLabelAnswers, label: str | None = None) -> list[dict]:
    """One explanation per text, in order. `probabilities(texts)` returns the calibrated probabilities
    [len(texts), labels] exactly as served; it is called once, with every original text and every variant of
    every text (identical texts scored once). `label`: explain this label (one of answers.labels) rather than
    the prediction.

    single-label: {"label", "score", "attributions"}
    multi-label:  {"labels": the predicted labels, best first, "explanations": [{"label", "score", "attributions"},
                  ...]} (one per predicted label; the highest-scoring one when none is predicted; the named one)
    attributions: [{"text", "start", "end", "weight"}, ...], one per word of words_of(text), in text order."""
    words = [words_of(text) for text in texts]
    variants = [[without(text, [w]) for w in ws] for text, ws in zip(texts, words, strict=True)]
    # Scored once each: the same text twice in a request, or a repeated word ("very very good"), costs one row.
    rows: dict[str, int] = {}
    for text in [*texts, *(v for vs in variants for v in vs)]:
        rows.setdefault(text, len(rows))
    scored = probabilities(list(rows)).float().cpu().tolist() if rows else []
    logger.debug("explained %d texts: %d words, %d texts scored", len(texts), sum(map(len, words)), len(rows))
    multi = isinstance(answers, MultiLabelAnswers)
    out = []
    for text, ws, vs in zip(texts, words, variants, strict=True):
        original, changed = scored[rows[text]], [scored[rows[v]] for v in vs]
        decision = answers.answer(original, 1)
        if not multi:
            out.append(_explained(answers.labels, original, changed, ws, label or decision["label"]))
            continue
        targets = [label] if label else (decision["labels"] or [decision["label"]])
        out.append({"labels": decision["labels"],
                    "explanations": [_explained(answers.labels, original, changed, ws, t) for t in targets]})
    return out
