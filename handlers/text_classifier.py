"""TorchServe handler for an exported text classifier bundle (see handlers/bundle.py).

TorchServe requires this module to define exactly one class and no module-level `handle`. Each stage has its own
module: request bodies (handlers/parsing.py, handlers/open_inference.py, errors in handlers/errors.py), texts to
model outputs (handlers/scoring.py: long-text policy, forward pass, out-of-scope score), the response cache
(handlers/cache.py), answers (handlers/answers.py, handlers/out_of_scope.py), explanations
(handlers/explanations.py), metrics and review capture. Request text is never logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

from handlers import bundle, runtimes
from handlers.batching import split_outputs
from handlers.bundle import BundleError
from handlers.cache import cache_for
from handlers.capture import ReviewConfig, ReviewQueue
from handlers.config import HandlerConfig, workers_from_model_yaml
from handlers.device import choose_device, cpu_has_bf16, cpu_only_warning, slow_bf16_warning
from handlers.drift_bins import text_features
from handlers.errors import ErrorType, RequestError, error_body
from handlers.explanations import explain
from handlers.metrics import ModelMetrics
from handlers.parsing import OneLineDecodeWarnings, Parsed, parse_request
from handlers.scoring import Scorer

logger = logging.getLogger(__name__)


class TextClassifierHandler(BaseHandler):
    def initialize(self, context):
        """Load and check the bundle; any BundleError here makes TorchServe refuse the registration."""
        start = time.perf_counter()
        props, yaml_config = context.system_properties, context.model_yaml_config or {}
        model_dir = Path(props["model_dir"])
        card = bundle.check(model_dir)
        config = HandlerConfig.from_model_yaml(yaml_config)
        self.config = dataclasses.replace(config, default_top_k=config.resolve_default_top_k(len(card.labels)))
        threads = self.config.thread_count(workers_from_model_yaml(yaml_config))
        logging.getLogger().addFilter(OneLineDecodeWarnings())
        torch.set_num_threads(threads)
        model, device = runtimes.load(card, str(self._device(card.variant, props.get("gpu_id"))), threads)
        self.scorer = Scorer.for_bundle(model_dir, card, model, torch.device(device), self.config)
        self.labels, self.answers, self.scope = card.labels, self.scorer.answers, self.scorer.scope
        # Everything besides the text that decides a cached output: a new version is a new worker, so a new cache.
        namespace = json.dumps({"max_length": self.scorer.max_length, "long_texts": self.scorer.policy.section()},
                               sort_keys=True)
        self.cache = cache_for(self.config.cache_size, self.config.cache_max_mb, len(card.labels), namespace)
        self._warm_up(model_dir)
        self.metrics, self.review, self.model_id = self._observers(context, yaml_config)
        self.manifest, self.initialized = context.manifest, True
        logger.info("loaded %s (%s %s, %s): device=%s threads=%d labels=%d max_length=%d chunk_size=%s "
                    "long_texts=%s cache=%d entries in %.2fs", card.base_model, card.runtime, card.variant,
                    card.problem_type, device, threads, len(self.labels), self.scorer.max_length,
                    self.scorer.chunk_size, self.scorer.policy.name, self.cache.capacity, time.perf_counter() - start)

    @staticmethod
    def _observers(context, yaml_config: dict):
        """The model's metrics, the review queue when the archive turned capture on (else None: no text is
        written anywhere), and the (name, version) that v2 responses name."""
        model = (context.manifest or {}).get("model", {})
        name, version = model.get("modelName", context.model_name), model.get("modelVersion", "")
        cache = getattr(context, "metrics", None)
        metrics = ModelMetrics(cache if hasattr(cache, "add_metric_to_cache") else None, name, version)
        review = ReviewConfig.from_model_yaml(yaml_config)
        return metrics, (ReviewQueue(review, name, version) if review.review else None), (name, version)

    @staticmethod
    def _device(variant: str, gpu_id) -> torch.device:
        """The GPU TorchServe assigned, if the variant can use it; says why a worker is slower than expected."""
        cuda = torch.cuda.is_available()
        device = choose_device(cuda, gpu_id, variant)
        for warning in (cpu_only_warning(variant, gpu_id, cuda), slow_bf16_warning(variant, device, cpu_has_bf16())):
            if warning:
                logger.warning(warning)
        return torch.device(device)

    def _warm_up(self, model_dir: Path) -> None:
        """One forward pass: pays the first-call cost now and proves the labels match the model's outputs."""
        encoded = self.scorer.encode(["warm-up"])
        logits, features = split_outputs(self.scorer.forward(encoded.input_ids, encoded.attention_mask))
        if logits.dim() != 2 or logits.shape[1] != len(self.labels):
            raise BundleError(f"{model_dir}: model outputs shape {tuple(logits.shape)} but the bundle has "
                              f"{len(self.labels)} labels; re-export the model")
        if self.scope.needs_features and features is None:
            raise BundleError(f"{model_dir}: the out-of-scope detector needs the features the model does not "
                              "output; re-export the model")
        self.scope.scores(self.answers.probabilities(logits), features)  # proves the detector fits the features

    @timed
    def preprocess(self, data):
        """Parse every request; encode the texts to predict of the whole batch together (one padded tensor)."""
        parsed = [parse_request(row, self.config, self._explaining(idx), self.labels) for idx, row in enumerate(data)]
        texts = _texts_to_predict(parsed)
        encoded = self.scorer.encode(texts) if texts else None
        return self._within_windows(parsed, encoded)

    def _explaining(self, idx: int) -> bool:
        """Whether request `idx` came to /explanations: TorchServe's frontend marks it with this header."""
        return self.context is not None and self.context.get_request_header(idx, "explain") == "True"

    def _within_windows(self, parsed: list[Parsed], encoded):
        """Requests with a text longer than max_windows windows (the windows long-text policy) get a 413; the
        other requests' texts keep their rows."""
        if encoded is None or max(encoded.windows) <= self.config.max_windows:
            return parsed, encoded
        kept, offset, out = [], 0, []
        for p in parsed:
            if p.error is None and not p.explain:  # a request whose texts `encoded` holds, in order
                counts = encoded.windows[offset: offset + len(p.texts)]
                if max(counts) > self.config.max_windows:
                    i = max(range(len(counts)), key=counts.__getitem__)
                    p = Parsed(error=RequestError(ErrorType.TOO_MANY_WINDOWS, (
                        f"text {i} spans {counts[i]} windows of {self.scorer.max_length} tokens; at most "
                        f"{self.config.max_windows} (handler option max_windows)")))
                else:
                    kept += range(offset, offset + len(counts))
                offset += len(counts)
            out.append(p)
        return out, (encoded.rows_of(kept) if kept else None)

    @timed
    def inference(self, data, *args, **kwargs):
        parsed, encoded = data
        probs = in_scope = None
        if encoded is not None:
            start = time.perf_counter()
            logits, in_scope = self.cache.scores(self.scorer.score, _texts_to_predict(parsed), encoded)
            probs = self.answers.probabilities(logits)
            logger.debug("%d texts (%d rows before the cache) in %.1f ms", len(in_scope), len(encoded.owners),
                         (time.perf_counter() - start) * 1000)
        # Explanations weigh each word by the calibrated probability without it: one batched call per request.
        explained = {idx: explain(p.texts, self.scorer.probabilities, self.answers, p.label)
                     for idx, p in enumerate(parsed) if p.explain and p.error is None}
        return parsed, probs, in_scope, encoded, explained

    def explain_handle(self, data_preprocess, raw_data):
        """TorchServe calls this instead of inference and postprocess when a batch's first request came to
        /explanations. preprocess has marked every request as an explanation or a prediction (one batch may hold
        both), so the path is the same."""
        return self.postprocess(self.inference(data_preprocess))

    @timed
    def postprocess(self, data):
        """One JSON body per request, in request order; failed requests get their own status."""
        parsed, probs, in_scope, encoded, explained = data
        rows, offset, out, top = (probs.tolist() if probs is not None else []), 0, [], []
        outside = 0
        for idx, p in enumerate(parsed):
            self.context.set_response_content_type(idx, "application/json")
            if p.error is not None:
                self.context.set_response_status(p.error.status, p.error.phrase, idx)
                out.append(json.dumps(error_body(p.error)))
                continue
            if p.explain:  # never logged, never captured for review
                out.append(json.dumps(p.shape.wrap(explained[idx], self.model_id, "explanations")))
                continue
            mine, scope = rows[offset: offset + len(p.texts)], in_scope[offset: offset + len(p.texts)]
            offset += len(p.texts)
            answers = [self.scope.mark(self.answers.answer(r, p.top_k), s) for r, s in zip(mine, scope, strict=True)]
            outside += sum(self.scope.is_out(a) for a in answers)
            out.append(json.dumps(p.shape.wrap(answers, self.model_id)))
            top += [(a["label"], a["score"]) for a in answers]
            if self.review is not None:
                self._capture(p.texts, answers)
        self._record(parsed, top, encoded, outside)
        return out

    def _capture(self, texts, answers) -> None:
        """Queue this request's texts that review capture keeps (handlers/capture.py); never costs an answer."""
        try:
            self.review.append([self.review.record(t, a, why) for t, a in zip(texts, answers, strict=True)
                                if (why := self.review.keep(a))])
        except OSError as e:
            logger.error("review capture failed, answers unaffected: %s", e)

    def _record(self, parsed, top: list, encoded, outside: int) -> None:
        """The batch's model metrics (handlers/metrics.py) from each text's (top-1 label, score), in batch order,
        and one log line of shapes, never text."""
        rejected = [p.error.type.code for p in parsed if p.error is not None]
        features = []
        if encoded is not None:  # each text's first row: the text, or its first window (as the drift profile counts)
            first = encoded.starts()
            features = text_features(encoded.input_ids[first], encoded.attention_mask[first], self.scorer.max_length,
                                     self.scorer.tokenizer.unk_token_id)
        answered = sum(p.error is None and not p.explain for p in parsed)
        self.metrics.record(top, features, answered, rejected, outside, self.cache.take_counts())
        logger.log(logging.INFO if rejected else logging.DEBUG, "batch of %d requests: %d texts, %d rejected",
                   len(parsed), len(top), len(rejected))


def _texts_to_predict(parsed: list[Parsed]) -> list[str]:
    return [t for p in parsed if p.error is None and not p.explain for t in p.texts]

