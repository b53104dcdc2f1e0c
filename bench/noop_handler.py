"""Benchmark floor, not a product handler: answers every request at once without a model.

Registered with the deployment's batch size and delay, its concurrency-1 latency is what TorchServe
itself adds to a lone request (HTTP, token check, the aggregator's wait, worker IPC). TorchServe
needs exactly one class in a handler module.
"""
from ts.torch_handler.base_handler import BaseHandler


class NoopHandler(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return ['{"label": "none"}'] * len(data)
