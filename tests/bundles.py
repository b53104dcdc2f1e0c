"""Tiny export bundles built offline in seconds, in the same format `training.export` writes.

The classifier head is randomly initialised, so predictions are meaningless, but every file the
handler and the archiver read is real: a frozen TorchScript trace, a saved tokenizer, config.json
with the label map, index_to_name.json and a model card carrying model.pt's SHA-256.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import torch

from handlers.bundle import MODEL_FILE, write_metadata
from handlers.tokenization import encode
from training.export import LogitsOnly, trace

MAX_LENGTH = 64
_BUILDERS = {"roberta": "tiny_roberta", "distilbert": "tiny_distilbert"}




def make_tiny_bundle(out_dir: Path, arch: str = "roberta", labels: Sequence[str] = ("negative", "positive"),
                     variant: str = "fp32") -> Path:
    """Write a complete bundle for a tiny random `arch` classifier into `out_dir` and return it.
    variant "bf16" casts the weights before tracing, as `training.export --dtype bf16` does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests import tiny

    if arch not in _BUILDERS:
        raise ValueError(f"arch must be one of {sorted(_BUILDERS)}, got {arch!r}")
    if variant not in ("fp32", "bf16"):
        raise ValueError(f"variant must be fp32 or bf16, got {variant!r}")
    out_dir = Path(out_dir)
    labels = list(labels)
    with tempfile.TemporaryDirectory() as base_dir:
        getattr(tiny, _BUILDERS[arch])(base_dir)
        torch.manual_seed(0)  # the random head is the same on every build
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, attn_implementation="eager",
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # Padding in the example input keeps the mask path in the trace (an all-ones mask can be folded away).
    example = encode(tokenizer, ["short", "a somewhat longer example text for tracing"], MAX_LENGTH)
    if variant == "bf16":
        model = model.to(torch.bfloat16)
    frozen = trace(LogitsOnly(model).eval(), example)  # export's own tracing, device rewrite included
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(frozen, str(out_dir / MODEL_FILE))
    tokenizer.save_pretrained(out_dir)
    model.config.architectures = [type(model).__name__]  # the base was saved as a masked LM
    model.config.save_pretrained(out_dir)
    write_metadata(out_dir, labels, {"max_length": MAX_LENGTH, "base_model": f"tiny-random-{arch}",
                                     "task": "text-classification", "source": "tests.bundles",
                                     "variant": variant})
    return out_dir
