"""The one tokenization function shared by training, export checks, benchmarks and the handler.

Padding is always to the longest text of the batch (dynamic padding), never to a fixed maximum:
a batch of short support tickets should not pay for 512 positions.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize `texts` together, pad to the longest, truncate at `max_length`.

    Returns int64 `input_ids` and `attention_mask`, the two inputs of the exported model.
    """
    enc = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def encode_unpadded(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, list]:
    """Same tokenization without padding, for `datasets.map` at training time.

    The Trainer's collator pads each batch later; keeping both functions here means training and
    serving cannot drift apart in truncation or special tokens.
    """
    return tokenizer(list(texts), truncation=True, max_length=max_length, return_token_type_ids=False)
