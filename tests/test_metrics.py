"""handlers/metrics.py: what the worker counts per batch, and that metrics.yaml declares exactly those metrics
(TorchServe's Prometheus mode drops anything undeclared without a word)."""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from handlers.metrics import GAUGES, METRICS, MODEL_DIMENSIONS, ModelMetrics

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_yaml_declares_every_model_metric_with_its_dimensions():
    model_metrics = yaml.safe_load((ROOT / "metrics.yaml").read_text())["model_metrics"]
    declared = {m["name"]: m["dimensions"] for m in model_metrics["counter"]}
    assert declared == {name: MODEL_DIMENSIONS + extra for name, extra in METRICS.items()}
    # TorchServe's own HandlerTime and PredictionTime gauges sit beside the cache's
    gauges = {m["name"]: m["dimensions"] for m in model_metrics["gauge"]}
    assert {name: gauges.get(name) for name in GAUGES} == {name: MODEL_DIMENSIONS + extra for name, extra in GAUGES.items()}
    for config in ("config.properties", "config.locked.properties"):
        assert "metrics_config=metrics.yaml" in (ROOT / config).read_text().splitlines()


class FakeCounter:
    def __init__(self, name, dims):
        self.name, self.dims, self.updates = name, dims, []

    def add_or_update(self, value, dimension_values):
        assert len(dimension_values) == len(self.dims)
        self.updates.append((tuple(dimension_values[len(MODEL_DIMENSIONS):]), value))


class FakeCache:
    def __init__(self):
        self.counters = {}

    def add_metric_to_cache(self, name, unit, dims, kind):
        self.counters[name] = FakeCounter(name, dims)
        return self.counters[name]


def test_one_update_per_label_and_bucket_of_a_batch():
    cache = FakeCache()
    metrics = ModelMetrics(cache, "clf", "2.0")
    metrics.record([("pos", 0.97), ("pos", 0.98), ("neg", 0.55)], [(12, False, 0), (64, True, 2), (3, False, 1)],
                   answered=2, rejected=["invalid_request", "too_many_texts", "invalid_request"])
    got = {name: sorted(c.updates) for name, c in cache.counters.items() if c.updates}
    assert got == {"PredictionsPerLabel": [(("neg",), 1), (("pos",), 2)],
                   "ConfidenceBucket": [(("le_0.6",), 1), (("le_0.99",), 2)],
                   "TokensBucket": [(("le_16",), 1), (("le_64",), 1), (("le_8",), 1)],
                   "TextsAnswered": [((), 3)], "RequestsAnswered": [((), 2)], "TokensSeen": [((), 79)],
                   "UnknownTokens": [((), 3)], "TruncatedTexts": [((), 1)],
                   "RejectedRequests": [(("invalid_request",), 2), (("too_many_texts",), 1)]}


def test_without_a_metrics_cache_nothing_is_recorded_and_nothing_fails(caplog):
    metrics = ModelMetrics(None, "clf", "1.0")
    with caplog.at_level(logging.DEBUG, logger="handlers.metrics"):
        assert metrics.record([("pos", 0.9)], [(5, False, 0)], answered=1, rejected=["invalid_request"]) is None
    assert metrics.counters == {}
    assert caplog.records == []  # record() swallows its own errors into the log: none was logged


def test_label_names_are_made_safe_for_the_metrics_log_line():
    cache = FakeCache()
    ModelMetrics(cache, "clf", "1.0").record([("billing: refund, late|x", 0.9)], [(5, False, 0)], answered=1, rejected=[])
    assert cache.counters["PredictionsPerLabel"].updates == [(("billing_ refund_ late_x",), 1)]
