"""One model version's replica: the REAL TorchServe handler (handlers/text_classifier.py) behind Serve's batching.

Each batch is one `handler.handle(rows, context)` call, as a TorchServe worker makes it: preprocess, inference and
postprocess (or the explain path when the batch's first request is an explanation), each request with its own body,
status and content type.

The batch runs on the replica's user-code event loop itself, blocking it, not on a thread beside it. Measured on 2
cores (banking77 MiniLM, concurrency 32, bench/ray_vs_torchserve.py): with the handler on a thread of its own, the
loop stayed free and handed each request over as it came, so batches held one text, and the forward passes, slowed
by the loop's threads contending for the GIL, took twice as long: 60 texts/s. Blocked, the loop queues what arrives
during a batch and @serve.batch takes it all next: batches of ~15 texts, 100 texts/s. Serve's health checks and
control calls run on the replica's main loop, which a batch does not block.
"""
from __future__ import annotations

import logging
import os

import ray
import torch
from ray import serve

from handlers.text_classifier import TextClassifierHandler
from textclf.rayserve.context import Answer, Call, RayMetrics, ServeContext, failed_batch
from textclf.rayserve.shape import MODEL_DEPLOYMENT, ModelShape

logger = logging.getLogger(__name__)


# A broken bundle fails its constructor every time: two tries say so without Serve's 20 retries.
@serve.deployment(name=MODEL_DEPLOYMENT, max_constructor_retry_count=2, graceful_shutdown_timeout_s=30)
class ModelReplica:
    def __init__(self, shape: dict):
        self.shape = ModelShape.from_dict(shape)
        self.handler, self.context = self._load()
        # OpenMP's thread count is a setting of the thread that sets it: initialize set it on this thread, and each
        # batch sets it again if it runs on another (_handle).
        self.threads = torch.get_num_threads()
        self.batch.set_max_batch_size(self.shape.batch_size)
        self.batch.set_batch_wait_timeout_s(self.shape.batch_delay_ms / 1000)

    def _load(self) -> tuple[TextClassifierHandler, ServeContext]:
        s = self.shape
        gpu_id = 0 if ray.get_gpu_ids() else None  # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU
        context = ServeContext(s.name, s.version, str(s.model_dir()), s.model_yaml, s.batch_size, gpu_id,
                               RayMetrics(s.name, s.version))
        handler = TextClassifierHandler()
        handler.initialize(context)  # a BundleError here fails the deployment, as it fails a registration
        return handler, context

    async def __call__(self, call: Call) -> Answer:
        return await self.batch(call)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)  # the shape's values are set in __init__
    async def batch(self, calls: list[Call]) -> list[Answer]:
        return self._handle(calls)  # blocking the loop on purpose (module docstring)

    def _handle(self, calls: list[Call]) -> list[Answer]:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        rows = self.context.start_batch(calls)
        try:
            return self.context.answers(self.handler.handle(rows, self.context))
        except Exception:  # as a TorchServe worker: the batch fails, the replica lives on
            logger.exception("a batch of %d requests failed", len(calls))
            return failed_batch(len(calls))

    def pid(self) -> int:
        """The replica's process (tests kill it to prove a replica's death loses no request)."""
        return os.getpid()
