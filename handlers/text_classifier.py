"""TorchServe handler for an exported text classifier bundle (see handlers/bundle.py).

TorchServe requires this module to define exactly one class and no module-level `handle`; request
parsing and response shapes live in handlers/parsing.py. Request text is never logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

from handlers import bundle, runtimes
from handlers.answers import answers_for
from handlers.batching import forward_by_length, split_outputs
from handlers.bundle import BundleError
from handlers.capture import ReviewConfig, ReviewQueue
from handlers.config import HandlerConfig, workers_from_model_yaml
from handlers.device import choose_device, cpu_has_bf16, cpu_only_warning, slow_bf16_warning
from handlers.drift_bins import text_features
from handlers.metrics import ModelMetrics
from handlers.out_of_scope import detection_for
from handlers.parsing import OneLineDecodeWarnings, error_body, parse_request
from handlers.tokenization import encode

logger = logging.getLogger(__name__)


class TextClassifierHandler(BaseHandler):
    def initialize(self, context):
        """Load and check the bundle; any BundleError here makes TorchServe refuse the registration."""
        start = time.perf_counter()
        props, yaml_config = context.system_properties, context.model_yaml_config or {}
        model_dir = Path(props["model_dir"])
        card = bundle.check(model_dir)
        self.labels, self.answers = card.labels, answers_for(card)
        config = HandlerConfig.from_model_yaml(yaml_config)
        self.config = dataclasses.replace(config, default_top_k=config.resolve_default_top_k(len(card.labels)))
        self.max_length = self.config.resolve_max_length(card.max_length)
        threads = self.config.thread_count(workers_from_model_yaml(yaml_config))
        logging.getLogger().addFilter(OneLineDecodeWarnings())
        torch.set_num_threads(threads)
        self.model, device = runtimes.load(card, str(self._device(card.variant, props.get("gpu_id"))), threads)
        self.device = torch.device(device)
        self.chunk_size = self.config.resolve_chunk_size(card.variant, device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.scope = detection_for(model_dir, card, self.config.out_of_scope, self.config.out_of_scope_label,
                                   self.config.out_of_scope_threshold)
        self._warm_up(model_dir)
        self.metrics, self.review = self._observers(context, yaml_config)
        self.manifest, self.initialized = context.manifest, True
        logger.info("loaded %s (%s %s, %s): device=%s threads=%d labels=%d max_length=%d chunk_size=%s in %.2fs",
                    card.base_model, card.runtime, card.variant, card.problem_type, self.device, threads, len(self.labels),
                    self.max_length, self.chunk_size, time.perf_counter() - start)

    @staticmethod
    def _observers(context, yaml_config: dict):
        """The model's metrics, and the review queue when the archive turned capture on (else None: no text is
        written anywhere)."""
        model = (context.manifest or {}).get("model", {})
        name, version = model.get("modelName", context.model_name), model.get("modelVersion", "")
        cache = getattr(context, "metrics", None)
        metrics = ModelMetrics(cache if hasattr(cache, "add_metric_to_cache") else None, name, version)
        review = ReviewConfig.from_model_yaml(yaml_config)
        return metrics, (ReviewQueue(review, name, version) if review.review else None)

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
        logits, features = split_outputs(self._forward(encode(self.tokenizer, ["warm-up"], self.max_length)))
        if logits.dim() != 2 or logits.shape[1] != len(self.labels):
            raise BundleError(f"{model_dir}: model outputs shape {tuple(logits.shape)} but the bundle has "
                              f"{len(self.labels)} labels; re-export the model")
        if self.scope.needs_features and features is None:
            raise BundleError(f"{model_dir}: the out-of-scope detector needs the features the model does not "
                              "output; re-export the model")
        self.scope.scores(self.answers.probabilities(logits), features)  # proves the detector fits the features

    def _forward(self, batch: dict):
        with torch.inference_mode():
            return forward_by_length(self.model, batch["input_ids"].to(self.device),
                                     batch["attention_mask"].to(self.device), self.chunk_size)

    @timed
    def preprocess(self, data):
        """Parse every request; tokenize all valid texts of the batch together (one padded tensor)."""
        parsed = [parse_request(row, self.config) for row in data]
        texts = [text for p in parsed for text in p.texts]
        return parsed, (encode(self.tokenizer, texts, self.max_length) if texts else None)

    @timed
    def inference(self, data, *args, **kwargs):
        parsed, batch = data
        if batch is None:
            return parsed, None, None, batch
        start = time.perf_counter()
        logits, features = split_outputs(self._forward(batch))
        probs = self.answers.probabilities(logits).cpu()
        in_scope = self.scope.scores(probs, features)  # every text's, from the same forward pass
        logger.debug("forward %s on %s in %.1f ms", tuple(batch["input_ids"].shape), self.device,
                     (time.perf_counter() - start) * 1000)
        return parsed, probs, in_scope, batch

    @timed
    def postprocess(self, data):
        """One JSON body per request, in request order; failed requests get their own status."""
        parsed, probs, in_scope, batch = data
        rows, offset, out, top = (probs.tolist() if probs is not None else []), 0, [], []
        outside = 0
        for idx, p in enumerate(parsed):
            self.context.set_response_content_type(idx, "application/json")
            if p.error is not None:
                self.context.set_response_status(p.error.status, p.error.phrase, idx)
                out.append(json.dumps(error_body(p.error)))
                continue
            mine, scope = rows[offset: offset + len(p.texts)], in_scope[offset: offset + len(p.texts)]
            offset += len(p.texts)
            answers = [self.scope.mark(self.answers.answer(r, p.top_k), s) for r, s in zip(mine, scope, strict=True)]
            outside += sum(self.scope.is_out(a) for a in answers)
            out.append(json.dumps(p.shape.wrap(answers)))
            top += [(a["label"], a["score"]) for a in answers]
            if self.review is not None:
                self._capture(p.texts, answers)
        self._record(parsed, top, batch, outside)
        return out

    def _capture(self, texts, answers) -> None:
        """Queue this request's texts that review capture keeps (handlers/capture.py); never costs an answer."""
        try:
            self.review.append([self.review.record(t, a, why) for t, a in zip(texts, answers, strict=True)
                                if (why := self.review.keep(a))])
        except OSError as e:
            logger.error("review capture failed, answers unaffected: %s", e)

    def _record(self, parsed, top: list, batch, outside: int) -> None:
        """The batch's model metrics (handlers/metrics.py) from each text's (top-1 label, score), in batch order,
        and one log line of shapes, never text."""
        rejected = [p.error.type.code for p in parsed if p.error is not None]
        features = [] if batch is None else text_features(batch["input_ids"], batch["attention_mask"],
                                                            self.max_length, self.tokenizer.unk_token_id)
        self.metrics.record(top, features, len(parsed) - len(rejected), rejected, outside)
        logger.log(logging.INFO if rejected else logging.DEBUG, "batch of %d requests: %d texts, %d rejected",
                   len(parsed), len(top), len(rejected))
