"""What the model sees and says, binned the same way at export (the bundle's reference profile, from the test
split) and in the worker (its Prometheus metrics), so `textclf.pipelines.drift` can compare the two bucket by bucket.

Per text: the predicted label (top-1), the top-1 score (calibrated, as served), the number of tokens the model
saw (after truncation at max_length), whether it was cut, how many of its tokens were the tokenizer's
unknown token, and (bundles with an out-of-scope detector) whether it was answered out of scope. Nothing here
keeps text.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

PROFILE_FILE = "reference_profile.json"
# Bucket upper bounds (inclusive). Confidence is finer near 1, where a healthy model puts most of its answers.
CONFIDENCE_EDGES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
TOKEN_EDGES = (8, 16, 24, 32, 48, 64, 96, 128, 256, 512, math.inf)


def safe(value: str) -> str:
    """A dimension value TorchServe can carry: its [METRICS] log line splits on ',', ':' and '|', so a label
    name holding one would drop the update; they become '_'."""
    return str(value).translate(str.maketrans({",": "_", ":": "_", "|": "_"}))


def bucket(value: float, edges: tuple) -> str:
    """The name of the bucket holding `value`: its upper bound ("le_0.9", "le_inf")."""
    return f"le_{edges[min(bisect.bisect_left(edges, value), len(edges) - 1)]:g}"


def bucket_names(edges: tuple) -> list[str]:
    return [f"le_{edge:g}" for edge in edges]


@dataclass
class Profile:
    """Counts per feature; `add` one batch at a time (in the worker) or the whole test split (at export)."""

    labels: dict = field(default_factory=dict)
    confidence: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    texts: int = 0
    truncated: int = 0
    token_total: int = 0
    unknown_tokens: int = 0
    out_of_scope: int | None = None  # None: the model has no detector (handlers/out_of_scope.py)

    def add(self, label: str, confidence: float, tokens: int, truncated: bool, unknown: int) -> None:
        self.labels[label] = self.labels.get(label, 0) + 1
        for counts, key in ((self.confidence, bucket(confidence, CONFIDENCE_EDGES)), (self.tokens, bucket(tokens, TOKEN_EDGES))):
            counts[key] = counts.get(key, 0) + 1
        self.texts += 1
        self.truncated += int(truncated)
        self.token_total += tokens
        self.unknown_tokens += unknown

    def to_json(self) -> dict:
        return {"texts": self.texts, "labels": self.labels, "confidence": self.confidence, "tokens": self.tokens,
                "truncated": self.truncated, "token_total": self.token_total, "unknown_tokens": self.unknown_tokens,
                "confidence_edges": list(CONFIDENCE_EDGES), "token_edges": [str(e) for e in TOKEN_EDGES],
                **({} if self.out_of_scope is None else {"out_of_scope": self.out_of_scope})}


def text_features(input_ids, attention_mask, max_length: int, unk_id) -> list[tuple[int, bool, int]]:
    """(tokens, truncated, unknown tokens) per row of an encoded batch. A text exactly max_length tokens long
    counts as truncated: the batch no longer says whether anything was cut, and such texts are rare."""
    lengths = attention_mask.sum(dim=1).tolist()
    unknown = ((input_ids == unk_id) & attention_mask.bool()).sum(dim=1).tolist() if unk_id is not None else [0] * len(lengths)
    return [(int(n), int(n) >= max_length, int(u)) for n, u in zip(lengths, unknown, strict=True)]


def profile_of(probs, labels: list[str], tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
               out_of_scope: tuple[list[bool], str] | None = None) -> Profile:
    """The profile of `texts` as a worker would record them: `probs` [texts, labels] are the served probabilities
    in text order (export already computed them for its accuracy check), the token features come from the
    serving encode, batch by batch (a text's features do not depend on its batch). `out_of_scope`: which texts
    the bundle's detector answers out of scope, and the label they are answered with."""
    from handlers.tokenization import encode  # imported here: it loads torch, which `textclf drift` does without

    out, top, best = Profile(), probs.argmax(axis=1), probs.max(axis=1)
    names = [labels[int(t)] for t in top]
    if out_of_scope is not None:
        flagged, label = out_of_scope
        names = [label if out else name for out, name in zip(flagged, names, strict=True)]
        out.out_of_scope = int(sum(flagged))
    for i in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[i: i + batch_size], max_length)
        features = text_features(batch["input_ids"], batch["attention_mask"], max_length, tokenizer.unk_token_id)
        for j, (tokens, cut, unknown) in enumerate(features, start=i):
            out.add(names[j], float(best[j]), tokens, cut, unknown)
    return out
