"""The runtimes a bundle can name in its card, behind one interface.

    load(card, device, threads) -> (model, device)

`model(input_ids, attention_mask)` returns float32 logits [batch, labels] as a torch tensor; `device` is
where inputs should be placed (a runtime may fall back from the one asked for, and says so in the log).
A new runtime is one module with a `load(path, device, threads)` and one line here.
"""
from __future__ import annotations

import importlib

# The same names as bundle.RUNTIME_FILES (a test keeps them equal).
LOADERS = {"torchscript": "handlers.torchscript", "onnxruntime": "handlers.onnx_runtime"}


def load(card, device: str, threads: int):
    """`card` comes from bundle.check, which has already refused a runtime not in bundle.RUNTIME_FILES."""
    # Imported on demand: a TorchScript worker never imports onnxruntime, and the reverse.
    return importlib.import_module(LOADERS[card.runtime]).load(card.model_path, device, threads)
