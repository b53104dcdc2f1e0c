"""The Open Inference Protocol (KServe v2), the body Triton, KServe and MLServer clients send, beside the handler's
own JSON and KServe v1 bodies. POST it to TorchServe's /predictions/{model}[/{version}] like any other body:

    {"id": "optional", "parameters": {"top_k": 3},
     "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["first text", "second text"]}],
     "outputs": [{"name": "label"}, {"name": "score"}]}                       (outputs: optional; default all)

and the answer is the v2 response, one named output tensor per field of the handler's answers, row-major:

    label      BYTES [n]      the top-1 label (the out-of-scope label for a text answered out of scope)
    score      FP32  [n]      its calibrated score
    top_labels BYTES [n, k]   the k best labels, best first (k = top_k, or the archive's default)
    top_scores FP32  [n, k]   their scores
    labels     BYTES [n]      multi-label models: each text's chosen labels, a JSON array (ragged, so one string)
    in_scope   FP32  [n]      bundles with an out-of-scope detector (docs/out-of-scope.md)
    out_of_scope BOOL [n]     likewise

A malformed body gets the handler's usual error body and type (handlers/errors.py), never a v2-only shape.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from handlers.errors import ErrorType, InvalidRequest

KEYS = ("id", "inputs", "outputs", "parameters")
INPUT = "text"
PARAMETERS = ("top_k",)
INPUT_PARAMETERS = ("content_type",)  # what some v2 clients add to a BYTES input; nothing to act on
OUTPUTS = ("label", "score", "top_labels", "top_scores", "labels", "in_scope", "out_of_scope")


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(ErrorType.INVALID_REQUEST, "v2 body: " + message)


@dataclass(frozen=True)
class V2Shape:
    """How a v2 request's predictions are wrapped: the Shape (handlers/parsing.py) of Open Inference bodies."""

    request_id: str | None = None
    outputs: tuple | None = None  # the output names asked for; None: all

    def wrap(self, predictions: list, model: tuple[str, str]) -> dict:
        body = {"model_name": model[0], "model_version": model[1]}
        if self.request_id is not None:
            body["id"] = self.request_id
        tensors = [t for t in tensors_of(predictions) if self.outputs is None or t["name"] in self.outputs]
        return {**body, "outputs": tensors}


def tensors_of(predictions: list[dict]) -> list[dict]:
    """The v2 output tensors of a request's answers (handlers/answers.py, marked by handlers/out_of_scope.py)."""
    n = len(predictions)
    k = max(len(p["scores"]) for p in predictions)
    ranked = [list(p["scores"].items()) for p in predictions]
    out = [_tensor("label", "BYTES", [n], [p["label"] for p in predictions]),
           _tensor("score", "FP32", [n], [p["score"] for p in predictions])]
    if all(len(r) == k for r in ranked):  # always, unless a client's top_k meets labels removed from some answers
        out += [_tensor("top_labels", "BYTES", [n, k], [name for r in ranked for name, _ in r]),
                _tensor("top_scores", "FP32", [n, k], [score for r in ranked for _, score in r])]
    if "labels" in predictions[0]:
        out.append(_tensor("labels", "BYTES", [n], [json.dumps(p["labels"], ensure_ascii=False) for p in predictions]))
    if "in_scope" in predictions[0]:
        out += [_tensor("in_scope", "FP32", [n], [p["in_scope"] for p in predictions]),
                _tensor("out_of_scope", "BOOL", [n], [p["out_of_scope"] for p in predictions])]
    return out


def _tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def parse(obj: dict, max_texts: int) -> tuple[list, dict, V2Shape]:
    """(the raw text values, the request's parameters, its shape) of a v2 body. The values are checked as texts by
    the caller, as every other body's are; raises InvalidRequest."""
    unknown = sorted(str(k) for k in obj if k not in KEYS)
    if unknown:
        raise _invalid(f"unknown field(s) {unknown}; allowed: {list(KEYS)}")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _invalid("'id' must be a string")
    inputs = obj["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _invalid(f"'inputs' must be a list of one tensor named '{INPUT}'")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise _invalid(f"missing input '{INPUT}' (inputs[0] is named {str(tensor.get('name'))[:40]!r})")
    extra = sorted(str(k) for k in tensor if k not in ("name", "datatype", "shape", "data", "parameters"))
    if extra:
        raise _invalid(f"unknown field(s) {extra} in input '{INPUT}'")
    if tensor.get("datatype") != "BYTES":
        raise _invalid(f"input '{INPUT}' must have datatype BYTES, got {str(tensor.get('datatype'))[:20]!r}")
    _parameters(tensor.get("parameters"), INPUT_PARAMETERS, f"input '{INPUT}' parameters")
    data = _data(tensor.get("data"), tensor.get("shape"))
    if len(data) > max_texts:
        raise InvalidRequest(ErrorType.TOO_MANY_TEXTS,
                             f"v2 input '{INPUT}' has {len(data)} texts; at most {max_texts} per request")
    return data, _parameters(obj.get("parameters"), PARAMETERS, "'parameters'"), V2Shape(request_id, _outputs(obj))


def _data(data, shape) -> list:
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                           for d in shape):
        raise _invalid(f"input '{INPUT}' needs a shape, a list of non-negative integers such as [n]")
    if not isinstance(data, list) or not data:
        raise _invalid(f"input '{INPUT}' needs 'data', a non-empty list of strings")
    if all(isinstance(row, list) for row in data):  # v2 allows data nested as its shape, e.g. [[a], [b]] for [2, 1]
        data = [x for row in data for x in row]
    if math.prod(shape) != len(data) or any(d != 1 for d in shape[1:]):
        raise _invalid(f"input '{INPUT}' has shape {shape} but {len(data)} values (send shape [n] or [n, 1])")
    return data


def _parameters(value, allowed: tuple, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be an object")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _invalid(f"unknown {where} {unknown}; allowed: {list(allowed)}")
    return value


def _outputs(obj: dict) -> tuple | None:
    requested = obj.get("outputs")
    if requested is None:
        return None
    if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                  for o in requested):
        raise _invalid("'outputs' must be a list of objects with a 'name'")
    names = tuple(o["name"] for o in requested)
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise _invalid(f"unknown output(s) {unknown}; known: {list(OUTPUTS)}")
    return names
