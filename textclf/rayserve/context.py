"""The TorchServe side of the handler, on a Ray Serve replica: its context, its metrics, its request rows.

The handler (handlers/text_classifier.py) runs unchanged: it gets TorchServe's own `ts.context.Context`, with one
`RequestProcessor` per request of a batch (headers in, status and content type out, per index), and rows decoded
as TorchServe's Python worker decodes them (ts/protocol/otf_message_handler.py), so each body reaches the same
parser and gets the same answer and status. Metrics go to Ray's metrics (Prometheus on each node's metrics export
port) under the handler's names with a `textclf_` prefix; Ray adds its own `ray_` in front.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ts.context import Context, RequestProcessor
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)
PREFIX = "textclf_"
# Handler time in ms (TorchServe's HandlerTime and the per-stage ts_handler_* of the `profile` option).
TIME_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
# Content types TorchServe's frontend splits into named form fields: the handler finds no body in them.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Call:
    """One HTTP request as the ingress hands it to a replica (what TorchServe's frontend sends its worker)."""

    body: bytes
    content_type: str = ""
    explain: bool = False  # it came to /explanations or :explain

    def row(self) -> dict:
        """The request row the handler reads, decoded as TorchServe's worker decodes it."""
        ctype = self.content_type or ""
        if ctype.split(";")[0].strip().lower() in FORM_TYPES:
            return {}
        value = self.body
        if ctype == "application/json":  # exactly: with a charset the worker hands bytes over, as here
            try:
                value = json.loads(self.body.decode("utf-8"))
            except Exception:  # noqa: BLE001 - as the worker: the bytes go on, the handler names the error
                value = self.body
        elif ctype.startswith("text"):
            try:
                value = self.body.decode("utf-8")
            except UnicodeDecodeError:
                value = self.body
        return {"body": value}

    def headers(self) -> dict:
        return {"explain": "True"} if self.explain else {}


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "application/json"


def failed_batch(n: int) -> list[Answer]:
    """What TorchServe answers every request of a batch whose handler raised (ts/service.py)."""
    body = json.dumps({"code": 503, "type": "InternalServerException", "message": "Prediction failed"})
    return [Answer(503, body)] * n


class ServeContext(Context):
    """TorchServe's Context for one replica; `start_batch` gives each request of a batch its own processor."""

    def __init__(self, name: str, version: str, model_dir: str, model_yaml: dict, batch_size: int,
                 gpu_id: int | None, metrics):
        super().__init__(name, model_dir, {"model": {"modelName": name, "modelVersion": version}}, batch_size,
                         gpu_id, "textclf-ray", metrics=metrics, model_yaml_config=model_yaml)

    def start_batch(self, calls: list[Call]) -> list[dict]:
        self.request_processor = [RequestProcessor(c.headers()) for c in calls]
        return [c.row() for c in calls]

    def answers(self, bodies: list) -> list[Answer]:
        out = []
        for idx, body in enumerate(bodies):
            status, _ = self.get_response_status(idx)
            ctype = self.get_response_content_type(idx) or "application/json"
            out.append(Answer(int(status), body if isinstance(body, str) else json.dumps(body), ctype))
        return out


class _Counter:
    def __init__(self, metric, dimension_names: list[str]):
        self.metric, self.names = metric, list(dimension_names)

    def add_or_update(self, value, dimension_values: list[str]) -> None:
        self.metric.inc(value, tags=dict(zip(self.names, map(str, dimension_values), strict=True)))


class _Gauge(_Counter):
    def add_or_update(self, value, dimension_values: list[str]) -> None:
        self.metric.set(value, tags=dict(zip(self.names, map(str, dimension_values), strict=True)))


def _ray_metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]):
    from ray.serve import metrics  # here: the unit tests pass their own factory and need no Ray

    if kind == "histogram":
        return metrics.Histogram(name, description, boundaries=TIME_BOUNDARIES_MS, tag_keys=tag_keys)
    return (metrics.Counter if kind == "counter" else metrics.Gauge)(name, description, tag_keys=tag_keys)


class RayMetrics:
    """What handlers/metrics.py and TorchServe's BaseHandler call on `context.metrics`, recorded as Ray metrics.
    `factory(kind, name, description, tag_keys)` makes one ("counter", "gauge" or "histogram")."""

    def __init__(self, model_name: str, version: str,
                 factory: Callable[[str, str, str, tuple], object] = _ray_metric):
        self.factory, self.base = factory, {"ModelName": model_name, "ModelVersion": version}
        self._times: dict[str, object] = {}

    def add_metric_to_cache(self, name: str, unit: str, dimension_names: list[str] | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER):
        names = tuple(dimension_names or ())
        if metric_type == MetricTypes.GAUGE:
            return _Gauge(self.factory("gauge", PREFIX + name, f"{name} ({unit})", names), names)
        return _Counter(self.factory("counter", PREFIX + name, f"{name} ({unit})", names), names)

    def add_time(self, name: str, value: float, idx=None, unit: str = "ms", *args, **kwargs) -> None:
        """TorchServe's HandlerTime (and the `profile` option's stage times): a histogram per model version."""
        try:
            if name not in self._times:
                self._times[name] = self.factory("histogram", f"{PREFIX}{name}_{unit}", f"{name} ({unit})",
                                                 tuple(self.base))
            self._times[name].observe(value, tags=self.base)
        except Exception:  # metrics must never cost an answer
            logger.exception("recording %s failed", name)

