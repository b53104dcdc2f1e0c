"""Handler options, read from the `handler:` section of the model's model-config.yaml.

The section is written by `textclf.torchserve.archive` (which offers every field below as a command-line option and
validates it, so a typo fails the build, not the registration). TorchServe itself reads one key of that
section, `profile`, to time the handler stages. Device and CPU probing live in handlers/device.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from handlers.checks import check_int, model_yaml_section

# Texts per forward pass for chunk_size "auto", by the bundle's variant on CPU (bench/serve_notes.md):
# fp32 and int8 are fastest in chunks of 4 (padding saved outweighs smaller matmuls, AVX2 EPYC and AMX
# Xeon alike); bf16 on AMX is as fast at 8 as at 16 and slower at 4. On a GPU the whole batch goes in
# one pass: on an H200, batches of 32 ran 1.6x (fp32) and 1.9x (bf16) faster in one pass than in
# chunks of 16, since each chunk costs kernel launches and a host sync (bench/results/gpu_chunks.json).
AUTO_CHUNK_SIZE = {"fp32": 4, "int8": 4, "bf16": 16}
GPU_CHUNK_SIZE = None
# Without a default_top_k, `scores` holds every label of a small label set and the best MANY_LABELS of a
# large one: 77 scores per text (3.5 KB) is rarely what a client of a 77-intent router wants.
MANY_LABELS = 10
# Entries of the response cache per worker: 10,000 texts cost about 6 MB at 77 labels and catch the repeats of a
# busy ticket queue's or moderation stream's frequent texts (templated notifications, copy-pasted spam, retries);
# a hit saves a forward pass of ~2-5 ms for a hash and a dictionary lookup (bench/results/cache.md).
DEFAULT_CACHE_SIZE = 10_000


class HandlerConfigError(ValueError):
    """An option of the `handler:` section is unknown or out of range."""

    exit_code = 2  # the commands report it as a mistake the user can fix (textclf.core.errors)


def parse_chunk_size(text: str) -> int | str | None:
    """A command-line chunk size: a positive integer, "auto", or "none" (one pass). Raises ValueError."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0  # not a number: the same refusal as a number below 1
    if value < 1:
        raise ValueError(f"chunk size must be a positive integer, 'auto' or 'none', got {text!r}")
    return value


def _option(help: str, default, **metadata):
    # Plain field metadata: handlers/ ships alone in the .mar and cannot import the project's cli package.
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class HandlerConfig:
    """handler options (model-config.yaml `handler:`)"""

    max_texts_per_request: int = _option("larger requests are answered 413", 64)
    default_top_k: int | None = _option(
        f"labels in `scores` when a request gives no top_k (default: all, or the best {MANY_LABELS} "
        f"of models with more than {MANY_LABELS} labels)", None)
    threads: int | None = _option("torch threads per worker (default: CPU cores // the archive's max workers)",
                                     None)
    max_length: int | None = _option("token limit, at most the bundle's (default: the bundle's)", None)
    max_text_chars: int = _option("texts are cut to this many characters before tokenizing: answered, not "
                                  "rejected or slow", 100_000)
    # A larger batch is sorted by length and run in chunks, each padded only to its own longest text
    # (handlers/batching.py).
    chunk_size: int | str | None = _option(
        "texts per forward pass: a batch is sorted by length and run in chunks of at most this many, each padded "
        "to its own longest (auto: 4 for fp32 and int8, 16 for bf16, one pass on a GPU; none: one pass)",
        "auto", parse=parse_chunk_size)
    profile: bool = _option("emit TorchServe's per-stage handler timing metrics", False)
    # Out-of-scope detection (handlers/out_of_scope.py), for bundles that carry a detector.
    out_of_scope: bool = _option("answer texts the bundle's detector finds out of scope as such (false: every text "
                                 "gets one of the model's labels, as before detection)", True)
    out_of_scope_threshold: float | None = _option(
        "move the detector's threshold without retraining: texts whose in_scope score is below it are out of scope "
        "(0.05 keeps about 95%% of in-scope texts; default: the bundle's, chosen at training)", None)
    out_of_scope_label: str = _option("the label of out-of-scope answers", "out_of_scope")
    # The response cache (handlers/cache.py): per worker, keyed by a hash of the text, never the text.
    cache_size: int = _option(
        "texts whose model outputs each worker keeps, least recently used first out (0: no cache); an entry is a "
        "hash and one score per label, about 0.6 KB at 77 labels", DEFAULT_CACHE_SIZE)
    cache_max_mb: float = _option("the most memory the cache of one worker may hold, in MB (bounds cache_size)", 64.0)
    # Long texts (handlers/long_texts.py): the bundle's policy; windows policies expand a text into windows.
    max_windows: int = _option("texts spanning more windows of max_length tokens are answered 413 (bundles with the "
                               "windows long-text policy; each window costs one text's forward pass)", 16)
    # Explanations (handlers/explanations.py): one forward pass per word of every text.
    explain_max_words: int = _option("texts to explain with more words are answered 413", 64)
    explain_max_texts: int = _option("explanation requests with more texts are answered 413", 8)

    def __post_init__(self):
        check = {"error": HandlerConfigError}
        check_int("handler option 'max_texts_per_request'", self.max_texts_per_request, 1, **check)
        check_int("handler option 'default_top_k'", self.default_top_k, 1, optional=True, **check)
        check_int("handler option 'threads'", self.threads, 1, optional=True, **check)
        check_int("handler option 'max_length'", self.max_length, 2, optional=True, **check)  # room for specials
        check_int("handler option 'max_text_chars'", self.max_text_chars, 1, **check)
        check_int("handler option 'cache_size'", self.cache_size, 0, **check)
        check_int("handler option 'max_windows'", self.max_windows, 1, **check)
        check_int("handler option 'explain_max_words'", self.explain_max_words, 1, **check)
        check_int("handler option 'explain_max_texts'", self.explain_max_texts, 1, **check)
        mb = self.cache_max_mb
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb > 0:
            raise HandlerConfigError(f"handler option 'cache_max_mb' must be a positive number, got {mb!r}")
        if self.chunk_size != "auto":
            check_int("handler option 'chunk_size'", self.chunk_size, 1, optional=True, also='"auto"', **check)
        for name in ("profile", "out_of_scope"):
            if not isinstance(getattr(self, name), bool):
                raise HandlerConfigError(f"handler option '{name}' must be true or false, got {getattr(self, name)!r}")
        threshold = self.out_of_scope_threshold
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 <= threshold < 1):
            raise HandlerConfigError(f"handler option 'out_of_scope_threshold' must be a number in [0, 1), got {threshold!r}")
        if not isinstance(self.out_of_scope_label, str) or not self.out_of_scope_label.strip():
            raise HandlerConfigError("handler option 'out_of_scope_label' must be a non-empty string")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> HandlerConfig:
        return model_yaml_section(model_yaml_config, "handler", cls, HandlerConfigError)

    def thread_count(self, workers: int, cpu_count: int | None = None) -> int:
        """Intra-op threads for one worker. Each TorchServe worker is its own process; letting every one
        of them use all cores oversubscribes the CPU and makes everything slower. `workers` is the most the
        archive plans (maxWorkers); textclf.torchserve.ops refuses to start more than that."""
        if self.threads is not None:
            return self.threads
        return max(1, (cpu_count or os.cpu_count() or 1) // max(1, workers))

    def resolve_chunk_size(self, variant: str, device: str) -> int | None:
        if self.chunk_size != "auto":
            return self.chunk_size
        return AUTO_CHUNK_SIZE.get(variant, AUTO_CHUNK_SIZE["fp32"]) if device.startswith("cpu") else GPU_CHUNK_SIZE

    def resolve_default_top_k(self, n_labels: int) -> int | None:
        """The top_k of a request that gives none; None: every label."""
        if self.default_top_k is not None:
            return self.default_top_k
        return MANY_LABELS if n_labels > MANY_LABELS else None

    def resolve_max_length(self, bundle_max_length: int) -> int:
        if self.max_length is None:
            return bundle_max_length
        if self.max_length > bundle_max_length:
            # Position embeddings and training stop at the bundle's length; longer inputs would break or drift.
            raise HandlerConfigError(
                f"handler option max_length={self.max_length} exceeds the bundle's max_length={bundle_max_length}"
            )
        return self.max_length


def workers_from_model_yaml(model_yaml_config: dict | None) -> int:
    """The most workers this model's archive plans to run at once (its maxWorkers)."""
    cfg = model_yaml_config or {}
    return int(cfg.get("maxWorkers") or cfg.get("minWorkers") or 1)
