"""Length-sorted chunked forward passes (handlers/batching.py): same logits, input order, less padding."""
from __future__ import annotations

import pytest
import torch

from handlers.batching import forward_by_length, split_outputs
from handlers.config import HandlerConfig, HandlerConfigError


class RecordingModel:
    """Logits that depend only on a row's real tokens, so any padding width gives the same answer."""

    def __init__(self):
        self.shapes = []

    def __call__(self, input_ids, attention_mask):
        self.shapes.append(tuple(input_ids.shape))
        real = input_ids * attention_mask
        return torch.stack([real.sum(1).float(), attention_mask.sum(1).float()], dim=1)


def ragged(lengths, width=None, left=False):
    width = width or max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = torch.arange(1, n + 1) * (row + 1)
        mask[row, cols] = 1
    return ids, mask


LENGTHS = [5, 40, 3, 17, 9, 40, 2, 33, 8, 21, 6, 12, 29, 4, 15, 11, 38]  # 17 texts


@pytest.mark.parametrize("left", [False, True])
def test_chunks_are_balanced_length_sorted_and_unpadded(left):
    ids, mask = ragged(LENGTHS, left=left)
    model = RecordingModel()
    out = forward_by_length(model, ids, mask, chunk_size=16)
    assert torch.equal(out, RecordingModel()(ids, mask))  # every row in its input position
    # 17 texts with chunk_size 16: 8 + 9 (never 16 + 1), shortest first, each cut to its own longest text.
    assert model.shapes == [(8, 11), (9, 40)]


def test_a_model_with_features_gets_both_outputs_back_in_input_order():
    ids, mask = ragged(LENGTHS)
    with_features = lambda i, m: (RecordingModel()(i, m), (i * m).float()[:, :1])  # noqa: E731
    logits, features = forward_by_length(with_features, ids, mask, chunk_size=4)
    expected = with_features(ids, mask)
    assert torch.equal(logits, expected[0]) and torch.equal(features, expected[1])
    assert split_outputs((logits, features))[1] is features and split_outputs(logits) == (logits, None)


def test_small_batches_and_none_run_in_one_pass():
    ids, mask = ragged(LENGTHS)
    for chunk_size in (None, 17, 64):
        model = RecordingModel()
        forward_by_length(model, ids, mask, chunk_size)
        assert model.shapes == [(17, 40)]


def test_real_model_gives_the_same_logits_chunked(tiny_roberta_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handlers.tokenization import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir).eval()
    texts = ["short", "a much longer text about a refund that never arrived at all", "card", "top up failed twice",
             "hello there", "what is my balance today please"]
    enc = encode(tokenizer, texts, 64)

    def logits(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    with torch.inference_mode():
        whole = logits(enc["input_ids"], enc["attention_mask"])
        chunked = forward_by_length(logits, enc["input_ids"], enc["attention_mask"], chunk_size=2)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -1, True, "16", 2.5])
def test_chunk_size_option_is_validated(bad):
    with pytest.raises(HandlerConfigError, match="chunk_size"):
        HandlerConfig.from_model_yaml({"handler": {"chunk_size": bad}})
    assert HandlerConfig.from_model_yaml({"handler": {"chunk_size": None}}).chunk_size is None
