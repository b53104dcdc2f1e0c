"""Long-text policies: what the model reads of a text longer than `max_length` tokens.

Support emails carry greetings, signatures, legal disclaimers and quoted earlier messages, and the question may
come after the first `max_length` tokens. Each training run chooses one policy, records it in run.json, and the
bundle's card carries it (the `long_texts` section) so that serving reads a text exactly as evaluation did:

    truncate   the first max_length tokens, as the shared encode (handlers/tokenization.py) has always cut them; the
               default, and what a bundle without the section gets
    head+tail  the first `head` share of the token budget and the rest from the end: a greeting is short, the end of
               a message often holds the question or its sign-off (Sun et al., 2019 kept 128 head + 382 tail tokens)
    windows    overlapping windows of max_length tokens (special tokens included in each), one every `stride` tokens,
               the last one moved back to end at the text's end so that no window is a fragment; every window of a
               batch goes through the one forward pass, and a text's logits are reduced over its windows by
               `aggregate`: mean, max (per label), or confident (the logits of the window whose top probability is
               highest; single-label only)

Measured on a long-ticket set built from banking77 (bench/long_text_bench.py, bench/results/long_texts.md,
docs/long-texts.md). Every policy gives a text that fits in max_length tokens exactly the rows truncate gives it.

A batch is encoded into `Encoded`: one row per window, `owners` naming the text of each row; rows are grouped by
text, in text order. Texts are not cut here: the handler cuts them to `max_text_chars` characters and refuses one
with more than `max_windows` windows before they reach the model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from handlers.bundle import MULTI, SINGLE, BundleError
from handlers.tokenization import encode

POLICIES = ("truncate", "head+tail", "windows")
CARD_KEY = "long_texts"  # the card's and run.json's section, e.g. {"policy": "windows", "stride": 64, "aggregate": "max"}
REDUCES = ("mean", "max")  # how reduce_rows combines a text's rows
AGGREGATES = {SINGLE: ("mean", "max", "confident"), MULTI: ("mean", "max")}
# The max of the windows' logits, per label. Single-label: on the long-ticket set the mean was the worst of all
# policies, below truncate: windows of greeting, signature and disclaimer do not answer "no label", they agree on
# the same few wrong labels, and the mean lets them outvote the one window that holds the question; the max and
# the most confident window are not outvoted, the max was the better of the two (bench/results/long_texts.md).
# Multi-label: a label one window shows is present in the text, whatever the other windows are about.
DEFAULT_AGGREGATE = {SINGLE: "max", MULTI: "max"}
DEFAULT_HEAD = 0.25  # head+tail: share of the token budget taken from the start (measured in docs/long-texts.md)


@dataclass(frozen=True)
class Encoded:
    """A batch as the model reads it: one row per window, grouped by text, in text order."""

    input_ids: torch.Tensor  # int64 [rows, length], padded to the longest row (dynamic padding)
    attention_mask: torch.Tensor  # int64 [rows, length]
    owners: torch.Tensor  # int64 [rows]: the index of the text each row belongs to (0..n_texts-1)
    windows: list[int]  # rows per text (len == n_texts); 1 for every text under truncate and head+tail

    def starts(self) -> torch.Tensor:
        """The index of each text's first row (rows are grouped by text, in text order)."""
        counts = torch.tensor(self.windows, dtype=torch.long)
        return torch.cumsum(counts, 0) - counts

    def rows_of(self, texts: Sequence[int]) -> Encoded:
        """Only these texts' rows, owners renumbered 0..len(texts)-1 in the given order; padding columns nobody
        uses dropped (left or right padding alike), so a subset pays only for its own longest row."""
        starts, windows = self.starts(), [self.windows[t] for t in texts]
        rows = torch.cat([torch.arange(int(starts[t]), int(starts[t]) + n) for t, n in zip(texts, windows, strict=True)]
                         ) if windows else torch.zeros(0, dtype=torch.long)
        owners = torch.repeat_interleave(torch.arange(len(windows)), torch.tensor(windows, dtype=torch.long))
        mask = self.attention_mask[rows]
        used = mask.any(dim=0).nonzero()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        return Encoded(self.input_ids[rows, lo:hi], mask[:, lo:hi], owners, windows)


def reduce_rows(rows: torch.Tensor, owners: torch.Tensor, n_texts: int, how: str) -> torch.Tensor:
    """Per-row values [rows, ...] -> per-text [n_texts, ...]: the mean or the max over each text's rows (per
    column). Every text must own at least one row. With one row per text it is the rows themselves, bit for bit,
    in text order: a policy that never splits answers exactly as before."""
    if how not in REDUCES:
        raise ValueError(f"reduce_rows: how must be one of {', '.join(REDUCES)}, got {how!r}")
    index = owners.to(rows.device).view(-1, *([1] * (rows.dim() - 1))).expand_as(rows)
    out = rows.new_zeros((n_texts, *rows.shape[1:]))
    if rows.shape[0] == n_texts:
        return out.scatter_(0, index, rows)
    return out.scatter_reduce_(0, index, rows, "mean" if how == "mean" else "amax", include_self=False)


def confident_rows(rows: torch.Tensor, owners: torch.Tensor, n_texts: int) -> torch.Tensor:
    """Per text, the logits of its row whose top softmax probability is highest (the first such row on a tie)."""
    owners = owners.to(rows.device)
    confidence = rows.float().softmax(dim=-1).max(dim=-1).values
    best = reduce_rows(confidence, owners, n_texts, "max")
    order = torch.arange(len(rows), device=rows.device)
    candidates = torch.where(confidence == best[owners], order, len(rows))
    first = torch.full((n_texts,), len(rows), device=rows.device).scatter_reduce_(0, owners, candidates, "amin")
    return rows[first]


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] .. [SEP] for BERT and DistilBERT,
    <s> .. </s> for RoBERTa), found by tokenizing one character with and without them: transformers 5's
    tokenizers have no build_inputs_with_special_tokens, and this holds for any template that wraps the text."""
    full = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i: i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    raise ValueError("cannot find where this tokenizer places a text between its special tokens")


def _content_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Every text's token ids without special tokens and without a length limit (verbose=False: a text longer
    than the model's maximum is expected here, not worth transformers' warning)."""
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def _pack(tokenizer, rows: list[list[int]], windows: list[int]) -> Encoded:
    """Pad the rows to the longest with the tokenizer's pad id, on its padding side, as encode does."""
    padded = tokenizer.pad({"input_ids": rows}, padding="longest", return_tensors="pt", return_attention_mask=True)
    owners = torch.repeat_interleave(torch.arange(len(windows)), torch.tensor(windows, dtype=torch.long))
    return Encoded(padded["input_ids"].long(), padded["attention_mask"].long(), owners, windows)


class Truncate:
    """The first max_length tokens (special tokens included): the shared encode, unchanged."""

    name = "truncate"

    def encode(self, tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
        enc = encode(tokenizer, texts, max_length)
        return Encoded(enc["input_ids"], enc["attention_mask"], torch.arange(len(texts)), [1] * len(texts))

    def aggregate(self, rows: torch.Tensor, owners: torch.Tensor, n_texts: int) -> torch.Tensor:
        return reduce_rows(rows, owners, n_texts, "mean")  # one row per text: the rows themselves

    def section(self) -> dict:
        return {"policy": self.name}


@dataclass(frozen=True)
class HeadTail:
    """The first `head` share of the token budget and the rest from the end; a text that fits is left whole."""

    head: float = DEFAULT_HEAD
    name = "head+tail"

    def encode(self, tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
        before, after = _special_tokens(tokenizer)
        budget = max(1, max_length - len(before) - len(after))
        first = round(budget * self.head)
        rows = [before + (ids if len(ids) <= budget else ids[:first] + ids[len(ids) - (budget - first):]) + after
                for ids in _content_ids(tokenizer, texts)]
        return _pack(tokenizer, rows, [1] * len(rows))

    def aggregate(self, rows: torch.Tensor, owners: torch.Tensor, n_texts: int) -> torch.Tensor:
        return reduce_rows(rows, owners, n_texts, "mean")  # one row per text: the rows themselves

    def section(self) -> dict:
        return {"policy": self.name, "head": self.head}


@dataclass(frozen=True)
class Windows:
    """Windows of max_length tokens (special tokens in each), one every `stride` tokens of text; a text's logits
    are its windows' reduced by `aggregate`. A stride longer than a window's text would skip tokens: it is capped
    at that length."""

    stride: int
    aggregate_by: str = "max"
    name = "windows"

    def encode(self, tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
        before, after = _special_tokens(tokenizer)
        budget = max(1, max_length - len(before) - len(after))
        step = min(self.stride, budget)
        rows, windows = [], []
        for ids in _content_ids(tokenizer, texts):
            starts = window_starts(len(ids), budget, step)
            rows += [before + ids[s: s + budget] + after for s in starts]
            windows.append(len(starts))
        return _pack(tokenizer, rows, windows)

    def aggregate(self, rows: torch.Tensor, owners: torch.Tensor, n_texts: int) -> torch.Tensor:
        if self.aggregate_by == "confident":
            return confident_rows(rows, owners, n_texts)
        return reduce_rows(rows, owners, n_texts, self.aggregate_by)

    def section(self) -> dict:
        return {"policy": self.name, "stride": self.stride, "aggregate": self.aggregate_by}


def window_starts(length: int, budget: int, step: int) -> list[int]:
    """Where each window of `budget` tokens starts in a text of `length` tokens: every `step` tokens, the last
    moved back to end at the text's end (a full window rather than a fragment of signature); one for a text that
    fits, the empty text included."""
    if length <= budget:
        return [0]
    last = length - budget
    return [*range(0, last, step), last]


def policy_from_section(section: dict | None, problem_type: str, where):
    """The policy a card's (or run.json's) `long_texts` section describes; None or absent: truncate, as bundles
    exported before there was a choice. Raises BundleError with one line naming `where`."""
    if not section:
        return Truncate()
    if not isinstance(section, dict):
        raise BundleError(f"{where}: {CARD_KEY} must be an object such as {{\"policy\": \"windows\", \"stride\": 64}}, "
                          f"got {section!r}")
    name = section.get("policy")
    known = {"truncate": {"policy"}, "head+tail": {"policy", "head"}, "windows": {"policy", "stride", "aggregate"}}
    if name not in POLICIES:
        raise BundleError(f"{where}: {CARD_KEY} policy {name!r} is not served (use one of {', '.join(POLICIES)})")
    unknown = sorted(set(section) - known[name])
    if unknown:
        raise BundleError(f"{where}: {CARD_KEY} {name} does not take {', '.join(unknown)} "
                          f"(it takes {', '.join(sorted(known[name] - {'policy'})) or 'nothing more'})")
    if name == "truncate":
        return Truncate()
    if name == "head+tail":
        head = section.get("head", DEFAULT_HEAD)
        if isinstance(head, bool) or not isinstance(head, (int, float)) or not 0 <= head <= 1:
            raise BundleError(f"{where}: {CARD_KEY} head must be a share from 0 to 1, got {head!r}")
        return HeadTail(float(head))
    stride, aggregate = section.get("stride"), section.get("aggregate", DEFAULT_AGGREGATE.get(problem_type, "max"))
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise BundleError(f"{where}: {CARD_KEY} windows needs a stride of at least 1 token, got {stride!r}")
    allowed = AGGREGATES.get(problem_type, AGGREGATES[SINGLE])
    if aggregate not in allowed:
        raise BundleError(f"{where}: {CARD_KEY} aggregate {aggregate!r} is not served for {problem_type} "
                          f"(use one of {', '.join(allowed)})")
    return Windows(stride, aggregate)
