"""The response cache: each worker remembers the model outputs of the texts it has scored.

Moderation streams and ticket queues repeat themselves (templated notifications, copy-pasted spam, a client's
retries); a repeated text needs no forward pass. What is kept is the model's output for the text — its logits,
before temperature and thresholds, and its in-scope score — so top_k, the temperature, the thresholds and the
out-of-scope threshold are applied on the way out and one entry serves every request shape and protocol.

Keys are a 16-byte BLAKE2b hash of the exact text with everything else that decides the output (max_length, the
long-text policy), never the text: a memory dump of a worker holds no request text. The cache lives in the worker's
memory and dies with it; a worker serves one model version, so a new version never answers from an old one's
outputs. Least recently used entries go first, bounded by a count and by memory.

Why per worker and not shared (Redis): bench/results/cache.md measures both the hit rates and the cost of a
network round trip; docs/serving.md says when a shared cache would pay.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)
# Measured with tracemalloc in CPython 3.11: an entry costs about 400 bytes beside its logits (the dict's slot,
# the key's bytes object, the tuple and the numpy array's header).
ENTRY_OVERHEAD = 400


@dataclass
class CacheCounts:
    """What the metrics report: hits, misses and evictions since the last report, and the entries held now."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0


@dataclass
class ResponseCache:
    capacity: int  # entries; 0: nothing is ever stored
    namespace: bytes  # what besides the text decides the outputs (max_length, long-text policy)
    entries: OrderedDict = field(default_factory=OrderedDict)
    counts: CacheCounts = field(default_factory=CacheCounts)

    @classmethod
    def sized(cls, size: int, max_mb: float, labels: int, namespace: str) -> ResponseCache:
        """A cache of at most `size` entries and `max_mb` MB for a model with `labels` outputs."""
        by_memory = int(max_mb * 1e6 // (ENTRY_OVERHEAD + 4 * labels))
        if by_memory < size:
            logger.info("response cache: %d entries fit in %.0f MB (cache_size %d)", by_memory, max_mb, size)
        # The namespace enters as BLAKE2b's key, which holds at most 64 bytes: its own digest always fits.
        return cls(min(size, by_memory), hashlib.blake2b(namespace.encode("utf-8"), digest_size=32).digest())

    def key(self, text: str) -> bytes:
        # surrogatepass: parsing has refused lone surrogates already; this never raises whatever reaches it.
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=self.namespace,
                               person=b"textclf-cache").digest()

    def get(self, keys: list[bytes]) -> list[tuple | None]:
        """The stored (logits, in_scope) of each key, or None; a hit becomes the most recently used."""
        found = []
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            found.append(entry)
        hits = sum(e is not None for e in found)
        self.counts.hits += hits
        self.counts.misses += len(keys) - hits
        return found

    def put(self, keys: list[bytes], logits: np.ndarray, in_scope: list) -> None:
        if self.capacity == 0:
            return
        for key, row, scope in zip(keys, logits, in_scope, strict=True):
            self.entries[key] = (row.copy(), scope)  # a copy: a row view would keep the whole batch's array alive
            self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
            self.counts.evictions += 1

    def scores(self, score, texts: list[str], encoded):
        """(logits [texts, labels] float32, in_scope per text) for `texts`, computing only what the cache lacks.

        `score(encoded)` is handlers.scoring.Scorer.score; `encoded` is every text's encoding (handlers/long_texts.py),
        of which only the misses' rows go through the model, as one forward pass. A text repeated within the batch
        is computed once."""
        keys = [self.key(t) for t in texts]
        found = self.get(keys)
        first_miss = {}  # key -> the first text of the batch that has it
        for i, (key, entry) in enumerate(zip(keys, found, strict=True)):
            if entry is None:
                first_miss.setdefault(key, i)
        if first_miss:
            todo = list(first_miss.values())
            fresh = score(encoded if len(todo) == len(texts) else encoded.rows_of(todo))  # all new: no copy
            logits = fresh.logits.float().numpy()
            self.put([keys[i] for i in todo], logits, fresh.in_scope)
            computed = {keys[i]: (logits[j], fresh.in_scope[j]) for j, i in enumerate(todo)}
            found = [entry if entry is not None else computed[key] for key, entry in zip(keys, found, strict=True)]
        return torch.from_numpy(np.stack([entry[0] for entry in found])), [entry[1] for entry in found]

    def take_counts(self) -> CacheCounts:
        """The counts since the last call (for the batch's metrics), and the entries held now."""
        counts, self.counts = self.counts, CacheCounts()
        counts.entries = len(self.entries)
        return counts


class NoCache:
    """cache_size 0: every text goes through the model, and nothing is hashed or held."""

    capacity = 0

    def scores(self, score, texts: list[str], encoded):
        fresh = score(encoded)
        return fresh.logits.float(), fresh.in_scope

    def take_counts(self) -> CacheCounts:
        return CacheCounts()


def cache_for(size: int, max_mb: float, labels: int, namespace: str) -> ResponseCache | NoCache:
    return ResponseCache.sized(size, max_mb, labels, namespace) if size else NoCache()
