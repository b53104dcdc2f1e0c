"""TorchScript graph fix-ups shared by export (when a bundle is written) and the handler (when it is loaded)."""
from __future__ import annotations

import torch


def follow_input_device(traced: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Replace every device the tracer recorded with the device of input_ids, in place.

    The tracer writes the example's device into the graph as a constant: transformers' mask code
    moves the attention mask to the inputs' device and builds index ranges there, which a CPU trace
    records as "cpu". Loaded on a GPU worker, that trace would build its mask on the CPU and fail next
    to CUDA activations. Weights follow torch.jit.load's map_location; after this, so does the rest.
    Export applies it; the handler applies it again so bundles exported before this fix also serve on
    GPUs (on a graph without such constants it changes nothing).
    """
    graph = traced.graph
    input_ids = list(graph.inputs())[1]  # inputs are (self, input_ids, attention_mask)
    for node in fixed_devices(graph):
        device = graph.create("prim::device", [input_ids])
        device.output().setType(node.output().type())
        device.insertBefore(node)
        node.output().replaceAllUsesWith(device.output())
        node.destroy()
    return traced


def fixed_devices(graph) -> list:
    """The device constants of a graph, including those inside control-flow blocks (a trace rarely has any)."""
    return [n for n in _nodes(graph) if n.kind() == "prim::Constant" and n.output().type().kind() == "DeviceObjType"]


def _nodes(graph_or_block):
    for node in graph_or_block.nodes():
        yield node
        for block in node.blocks():
            yield from _nodes(block)


def load(path, device: str, threads: int):
    """The runtime interface (handlers/runtimes.py): a callable (input_ids, attention_mask) -> logits on `device`."""
    del threads  # torch's intra-op pool is the process's, set once by the handler
    return follow_input_device(torch.jit.load(str(path), map_location=device)).eval(), device
