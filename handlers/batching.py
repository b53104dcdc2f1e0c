"""Forward a padded batch in length-sorted chunks.

A dynamic batch pads every text to the longest one; with mixed lengths most of the compute goes to
padding (and attention grows with the square of the padded length). Sorting the batch by real length
and running it in chunks of at most `chunk_size`, each cut to its own longest text, keeps the padding
small while each forward pass stays large enough for efficient matmuls. Chunks are of equal size (17
texts with chunk_size 16 run as 8 + 9, not 16 + 1: a one-text forward costs almost as much as a full
one). Outputs come back in input order: the logits, or (logits, features) for a bundle that exports features
for out-of-scope detection (handlers/out_of_scope.py).
"""
from __future__ import annotations

import itertools

import torch


def split_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, features or None) from what a runtime's model returns: logits alone (bundles without a
    feature-space detector, and every bundle exported before there was one) or (logits, features)."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def forward_by_length(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_size: int | None):
    """model(input_ids, attention_mask) for the whole batch, computed chunk by chunk; None: one pass."""
    n = input_ids.shape[0]
    if chunk_size is None or n <= chunk_size:
        return model(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    chunks = -(-n // chunk_size)
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    out = None  # one tensor per output of the model
    for start, stop in itertools.pairwise(bounds):
        rows = order[start:stop]
        mask = attention_mask[rows]
        # Columns that hold a real token in any row of the chunk; works for left and right padding alike.
        used = mask.any(dim=0).nonzero()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        got = model(input_ids[rows, lo:hi], mask[:, lo:hi])
        parts = got if isinstance(got, (tuple, list)) else (got,)
        if out is None:
            out = [t.new_empty((n, *t.shape[1:])) for t in parts]
        for whole, part in zip(out, parts, strict=True):
            whole[rows] = part
    return tuple(out) if isinstance(got, (tuple, list)) else out[0]
