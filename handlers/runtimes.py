"""The runtimes a bundle can name in its card: the one table of each runtime's model file and loader.

    load(card, device, threads) -> (model, device)

`model(input_ids, attention_mask)` returns float32 logits [batch, labels] as a torch tensor; `device` is
where inputs should be placed (a runtime may fall back from the one asked for, and says so in the log).
A new runtime is one module with a `load(path, device, threads)` and one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    model_file: str  # the file of the bundle this runtime reads
    loader: str  # the module whose load(path, device, threads) runs it


RUNTIMES = {
    "torchscript": Runtime("model.pt", "handlers.torchscript"),
    "onnxruntime": Runtime("model.onnx", "handlers.onnx_runtime"),
    "aotinductor": Runtime("model.pt2", "handlers.aot_inductor"),
}


def load(card, device: str, threads: int):
    """`card` comes from bundle.check, which has already refused a runtime not in RUNTIMES."""
    # Imported on demand: a TorchScript worker never imports onnxruntime, and the reverse.
    return importlib.import_module(RUNTIMES[card.runtime].loader).load(card.model_path, device, threads)
