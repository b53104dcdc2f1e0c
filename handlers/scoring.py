"""Texts in, model outputs out: the one path from texts to their logits and in-scope scores.

    encode(texts)    the bundle's long-text policy (handlers/long_texts.py): one row per text, or several windows
    score(encoded)   one forward pass, length-sorted in chunks (handlers/batching.py); each row's in-scope score
                     (handlers/out_of_scope.py); rows aggregated back to their texts by the policy
    probabilities(texts)  calibrated probabilities as served: what explanations (handlers/explanations.py) weigh

The TorchServe handler runs this for every batch (behind its response cache, handlers/cache.py); `Scorer.load`
gives the same object in-process, for `textclf explain` and the benchmarks, so a figure measured there is the
served one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from handlers import bundle, runtimes
from handlers.answers import answers_for
from handlers.batching import forward_by_length, split_outputs
from handlers.config import HandlerConfig
from handlers.long_texts import CARD_KEY, policy_from_section, reduce_rows
from handlers.out_of_scope import detection_for


@dataclass(frozen=True)
class Scores:
    logits: torch.Tensor  # [texts, labels] float32 on the CPU: before temperature and thresholds
    in_scope: list  # per text: the in-scope score, or None where the bundle has no detector (or it is off)


class Scorer:
    def __init__(self, card, model, device: torch.device, tokenizer, max_length: int, chunk_size: int | None,
                 scope):
        self.card, self.model, self.device, self.tokenizer = card, model, device, tokenizer
        self.max_length, self.chunk_size, self.scope = max_length, chunk_size, scope
        self.labels, self.answers = card.labels, answers_for(card)
        self.policy = policy_from_section(card.raw.get(CARD_KEY), card.problem_type,
                                          Path(card.model_path).parent / bundle.CARD_FILE)

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu", threads: int | None = None,
             config: HandlerConfig | None = None) -> Scorer:
        """A bundle's scorer in this process, with the archive's handler options (default: none set)."""
        config = config or HandlerConfig()
        card = bundle.check(Path(model_dir))
        model, device = runtimes.load(card, device, threads or torch.get_num_threads())
        return cls.for_bundle(Path(model_dir), card, model, torch.device(device), config)

    @classmethod
    def for_bundle(cls, model_dir: Path, card, model, device: torch.device, config: HandlerConfig) -> Scorer:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        scope = detection_for(model_dir, card, config.out_of_scope, config.out_of_scope_label,
                              config.out_of_scope_threshold)
        return cls(card, model, device, tokenizer, config.resolve_max_length(card.max_length),
                   config.resolve_chunk_size(card.variant, str(device)), scope)

    def encode(self, texts: list[str]):
        return self.policy.encode(self.tokenizer, texts, self.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The model's outputs (logits, or logits and features) for a padded batch."""
        with torch.inference_mode():
            return forward_by_length(self.model, input_ids.to(self.device), attention_mask.to(self.device),
                                     self.chunk_size)

    def score(self, encoded) -> Scores:
        logits, features = split_outputs(self.forward(encoded.input_ids, encoded.attention_mask))
        logits = logits.float().cpu()
        # Each row's own in-scope score; a text spanning windows is as in scope as its most in-scope window, since
        # the greeting and signature around a ticket's question belong to no label.
        rows = self.scope.scores(self.answers.probabilities(logits), features)
        n = len(encoded.windows)
        if rows[0] is None:  # no detector
            in_scope = [None] * n
        elif len(rows) == n:  # one row per text
            in_scope = rows
        else:
            in_scope = reduce_rows(torch.tensor(rows, dtype=torch.float64)[:, None], encoded.owners, n, "max")
            in_scope = in_scope[:, 0].tolist()
        return Scores(self.policy.aggregate(logits, encoded.owners, n), in_scope)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Calibrated probabilities [texts, labels], as served (temperature or sigmoid applied)."""
        return self.answers.probabilities(self.score(self.encode(list(texts))).logits)

