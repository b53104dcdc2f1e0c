"""The runtimes a bundle can name in its card, behind one interface.

    load(card, device, threads) -> (model, device)

`model(input_ids, attention_mask)` returns float32 logits [batch, labels] as a torch tensor; `device` is
where inputs should be placed (a runtime may fall back from the one asked for, and says so in the log).
A new runtime is one module with a `load(path, device, threads)` and one line here.
"""
from __future__ import annotations

import importlib

from handlers.bundle import BundleError

LOADERS = {"torchscript": "handlers.torchscript", "onnxruntime": "handlers.onnx_runtime"}


def load(card, device: str, threads: int):
    if card.runtime not in LOADERS:  # bundle.check already refuses these; a second line of defence costs nothing
        raise BundleError(f"runtime {card.runtime!r} is not served (use one of {', '.join(LOADERS)})")
    # Imported on demand: a TorchScript worker never imports onnxruntime, and the reverse.
    return importlib.import_module(LOADERS[card.runtime]).load(card.model_path, device, threads)
