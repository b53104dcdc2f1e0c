"""What an exported model computes: (input_ids, attention_mask) -> (float32 logits, float32 features).

The features are the input of the classifier's last layer (BERT's pooled output after dropout, RoBERTa's head
after its dense layer, DistilBERT's pre-classifier activation): the representation the labels are linear in,
where out-of-scope detection measures distances (handlers/out_of_scope.py). A forward pre-hook on that layer
reads them, so one wrapper serves every architecture; torch.jit.trace and the ONNX exporter both record the
hooked tensor as a second output.
"""
from __future__ import annotations

import torch


def head_name(model, out_features: int) -> str:
    """The module name of the classifier's output layer: the last Linear with one output per label (BERT's
    `classifier`, RoBERTa's `classifier.out_proj`, DistilBERT's `classifier`)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == out_features]
    if not names:
        raise ValueError(f"no output layer with {out_features} outputs in {type(model).__name__}")
    return names[-1]


class LogitsAndFeatures(torch.nn.Module):
    """What gets exported. `head` names the output layer, found on the fp32 model: once quantised to int8 it is
    no longer a torch.nn.Linear, but keeps its name."""

    def __init__(self, model, head: str):
        super().__init__()
        self.model, self.head = model, dict(model.named_modules())[head]

    def forward(self, input_ids, attention_mask):
        seen = []
        hook = self.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            hook.remove()
        return logits.float(), seen[0].float()


def with_features(model) -> LogitsAndFeatures:
    """An eager Hugging Face classifier as the exported function."""
    return LogitsAndFeatures(model, head_name(model, model.config.num_labels)).eval()
