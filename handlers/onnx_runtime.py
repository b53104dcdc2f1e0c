"""ONNX Runtime behind the runtime interface (handlers/runtimes.py): one InferenceSession per worker.

The session takes numpy int64 inputs on the host and returns float32 logits, which come back as a torch
tensor so batching, answers and the export checks treat both runtimes alike. Named onnx_runtime, not onnx,
so the module can never shadow the `onnx` package wherever handlers/ sits on sys.path.
"""
from __future__ import annotations

import logging

import onnxruntime as ort
import torch

logger = logging.getLogger(__name__)
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
SPINNING_STOP = "session.force_spinning_stop"


class OnnxModel:
    """model(input_ids, attention_mask) -> float32 logits [batch, labels] (or logits and features), like a
    TorchScript module."""

    def __init__(self, path, threads: int, providers: list):

        options = ort.SessionOptions()
        # Threads per worker are sized by the handler (cores / workers); inter-op parallelism only helps
        # graphs with independent branches, which an encoder has none of.
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # ORT's intra-op threads busy-wait for work, and by default go on spinning after a run returns, for the
        # next one. In a TorchServe worker the next run is a request away, and the spinning takes the cores the
        # frontend and the other workers need: one worker x 2 threads kept 1.45 cores busy at concurrency 1 for
        # 0.8 cores of work, and served a quarter fewer texts/s at concurrency 32. force_spinning_stop keeps the
        # spinning inside a run (quick hand-offs between ops; with spinning off altogether, batch 1 ran 20%
        # slower) and ends it when the run returns (bench/serve_notes.md, "ONNX Runtime's spinning threads").
        options.add_session_config_entry(SPINNING_STOP, "1")
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        # "logits", and "features" in bundles exported for out-of-scope detection (handlers/out_of_scope.py).
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        got = [torch.from_numpy(a) for a in self.session.run(self.outputs, feeds)]
        return got[0] if len(got) == 1 else tuple(got)


def providers_for(device: str, available: list) -> tuple[list, str]:
    """Execution providers for the device TorchServe assigned, and the device the logits are computed on.
    The GPU needs the onnxruntime-gpu wheel (CUDAExecutionProvider); without it the worker runs on the CPU."""
    if device.startswith("cuda"):
        if CUDA in available:
            index = int(device.partition(":")[2] or 0)
            return [(CUDA, {"device_id": index}), CPU], device
        logger.warning("this worker was assigned %s but onnxruntime has no %s (install onnxruntime-gpu); "
                       "running on the CPU", device, CUDA)
    return [CPU], "cpu"


def load(path, device: str, threads: int):

    providers, device = providers_for(device, ort.get_available_providers())
    model = OnnxModel(path, threads, providers)
    logger.info("onnxruntime %s session on %s (providers %s, %d intra-op threads)", ort.__version__, device,
                ",".join(model.providers), threads)
    return model, device
