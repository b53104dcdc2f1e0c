"""The model's own metrics, sent through TorchServe's metrics API to :8082/metrics (Prometheus mode).

TorchServe's frontend exposes a backend metric only if metrics.yaml declares it with exactly these names and
dimensions (model_metrics section): the declaration lives in the repository's metrics.yaml and `METRICS`
below is checked against it by the tests, so the two cannot drift apart. Counters only: TorchServe 0.12's
Prometheus mode has no histograms for backend metrics, so distributions are counters with a `Bucket`
dimension, binned as the bundle's reference profile is (handlers/drift_bins.py) for `textclf.pipelines.drift`.

Each update is one `[METRICS]` log line from the worker to the frontend, so updates are aggregated per batch:
one line per label and bucket seen in the batch, not per text. No text is ever part of a metric.
"""
from __future__ import annotations

import logging
from collections import Counter

from ts.metrics.metric_type_enum import MetricTypes

from handlers.drift_bins import CONFIDENCE_EDGES, TOKEN_EDGES, bucket, safe

logger = logging.getLogger(__name__)
MODEL_DIMENSIONS = ["ModelName", "ModelVersion", "Level"]
# name -> the dimensions after MODEL_DIMENSIONS. Declared in metrics.yaml under model_metrics: counter.
METRICS = {
    "PredictionsPerLabel": ["Label"],  # texts answered, by top-1 label
    "ConfidenceBucket": ["Bucket"],  # texts by top-1 calibrated score (le_0.3 ... le_1)
    "TokensBucket": ["Bucket"],  # texts by tokens seen after truncation (le_8 ... le_inf)
    "TextsAnswered": [],
    "RequestsAnswered": [],
    "TokensSeen": [],
    "UnknownTokens": [],
    "TruncatedTexts": [],  # texts at max_length tokens
    "RejectedRequests": ["Reason"],  # by the error type of the JSON error body
    "OutOfScopeTexts": [],  # texts answered out of scope (handlers/out_of_scope.py); their share is drift too
    "CacheHits": [],  # texts answered from the worker's response cache (handlers/cache.py)
    "CacheMisses": [],  # texts the cache did not hold (a cache of size 0 reports neither)
    "CacheEvictions": [],  # entries dropped for newer ones: many, with few hits, asks for a larger cache_size
}
# Gauges: a value set, not added. Declared in metrics.yaml under model_metrics: gauge.
GAUGES = {
    "CacheEntries": [],  # entries held by the worker's response cache now
}


class ModelMetrics:
    """Counters of one worker's model; `record` once per batch. Without a metrics cache (tests calling the
    handler directly with a bare context) it does nothing."""

    def __init__(self, cache, model_name: str, version: str):

        self.base = [model_name, version, "Model"]
        self.counters = {} if cache is None else {
            name: cache.add_metric_to_cache(name, "Count", MODEL_DIMENSIONS + extra, kind)
            for table, kind in ((METRICS, MetricTypes.COUNTER), (GAUGES, MetricTypes.GAUGE))
            for name, extra in table.items()}

    def _add(self, name: str, value: int, *dimension_values: str) -> None:
        if value and name in self.counters:
            self.counters[name].add_or_update(value, [safe(v) for v in self.base + list(dimension_values)])

    def record(self, answers: list[tuple[str, float]], features: list[tuple[int, bool, int]], answered: int,
               rejected: list[str], out_of_scope: int = 0, cache=None) -> None:
        """answers: (top-1 label, top-1 score) per text; features: handlers.drift_bins.text_features rows; answered:
        requests answered; rejected: the error type of each rejected request; out_of_scope: texts answered so;
        cache: the response cache's handlers.cache.CacheCounts since the last batch (None: no cache)."""
        try:
            for label, n in Counter(label for label, _ in answers).items():
                self._add("PredictionsPerLabel", n, label)
            for name, edges, values in (("ConfidenceBucket", CONFIDENCE_EDGES, [s for _, s in answers]),
                                        ("TokensBucket", TOKEN_EDGES, [t for t, _, _ in features])):
                for key, n in Counter(bucket(v, edges) for v in values).items():
                    self._add(name, n, key)
            self._add("TextsAnswered", len(answers))
            self._add("RequestsAnswered", answered)
            self._add("TokensSeen", sum(t for t, _, _ in features))
            self._add("UnknownTokens", sum(u for _, _, u in features))
            self._add("TruncatedTexts", sum(cut for _, cut, _ in features))
            self._add("OutOfScopeTexts", out_of_scope)
            for reason, n in Counter(rejected).items():
                self._add("RejectedRequests", n, reason)
            if cache is not None and cache.hits + cache.misses:
                self._add("CacheHits", cache.hits)
                self._add("CacheMisses", cache.misses)
                self._add("CacheEvictions", cache.evictions)
                if "CacheEntries" in self.counters:
                    self.counters["CacheEntries"].add_or_update(cache.entries, [safe(v) for v in self.base])
        except Exception:  # metrics must never cost an answer
            logger.exception("recording model metrics failed")
