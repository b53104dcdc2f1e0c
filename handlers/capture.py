"""Review capture: the opt-in queue of served texts that a person should look at. OFF BY DEFAULT.

Turned on per archive (`textclf.torchserve.archive --review`, the `review:` section of model-config.yaml), a worker
appends to a JSONL queue every text whose top-1 calibrated score is below `below`, every text answered out of
scope (handlers/out_of_scope.py), plus a random `sample` share of the rest: the text itself, the predicted
label(s), the best scores, the in-scope score where detection runs, the model name and version, the time and why
it was kept. THIS STORES REQUEST TEXT: the queue is the one place it is ever written, a file of
its own created with mode 0600 (never the log), size-bounded and rotated (`max_mb`, `backups` older files).
With capture off nothing is written at all. `python -m textclf.pipelines.review QUEUE` labels the queue.

Several workers append to one queue: each record is one os.write of one line on a file opened O_APPEND, and
rotation happens under an exclusive lock, so lines never interleave and no record is lost to a rename.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from handlers.checks import model_yaml_section

logger = logging.getLogger(__name__)
SCORES_KEPT = 5  # the best scores stored with each record: enough to review, not the whole label set


class ReviewConfigError(ValueError):
    """An option of the `review:` section is unknown or out of range."""

    exit_code = 2  # the commands report it as a mistake the user can fix (textclf.core.errors)


def _option(help: str, default):
    return field(default=default, metadata={"help": help})  # plain metadata: handlers/ ships alone in the .mar


@dataclass
class ReviewConfig:
    """review capture (model-config.yaml `review:`; stores request text, off by default)"""

    review: bool = _option("capture texts for review into a JSONL queue (stores request text; off by default)", False)
    review_queue: str | None = _option(
        "the queue file (default: review/<model>-<version>.jsonl in TorchServe's working directory)", None)
    review_below: float = _option("capture every text whose top-1 calibrated score is below this", 0.6)
    review_sample: float = _option("and this random share of the other texts (0 to 1)", 0.01)
    review_max_mb: float = _option("rotate the queue at this size", 50.0)
    review_backups: int = _option("rotated queues kept (queue.1 ... queue.N)", 3)

    def __post_init__(self):
        if not isinstance(self.review, bool):
            raise ReviewConfigError(f"review option 'review' must be true or false, got {self.review!r}")
        for name, low, high in (("review_below", 0.0, 1.0), ("review_sample", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ReviewConfigError(f"review option '{name}' must be a number from {low:g} to {high:g}, got {value!r}")
        if isinstance(self.review_max_mb, bool) or not isinstance(self.review_max_mb, (int, float)) or self.review_max_mb <= 0:
            raise ReviewConfigError(f"review option 'review_max_mb' must be positive, got {self.review_max_mb!r}")
        if isinstance(self.review_backups, bool) or not isinstance(self.review_backups, int) or self.review_backups < 0:
            raise ReviewConfigError(f"review option 'review_backups' must be an integer >= 0, got {self.review_backups!r}")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> ReviewConfig:
        return model_yaml_section(model_yaml_config, "review", cls, ReviewConfigError)


class ReviewQueue:
    """Appends review records to the queue file; rotates it past its size."""

    def __init__(self, config: ReviewConfig, model: str, version: str, seed: int | None = None):
        self.config, self.model, self.version = config, model, version
        self.path = Path(config.review_queue or Path("review") / f"{model}-{version or 'default'}.jsonl").resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.random = random.Random(seed)
        logger.warning("review capture is ON: texts below score %.2f, texts answered out of scope and %.1f%% of the "
                       "rest are stored in %s", config.review_below, 100 * config.review_sample, self.path)

    def keep(self, answer: dict) -> str | None:
        """Why this answer's text is kept for review, or None."""
        # An out-of-scope answer's score is how sure the model is that the text fits none of its labels: often
        # high, so the score rule alone would never keep it, yet these are the texts reviewers most need to see.
        if answer.get("out_of_scope"):
            return "out_of_scope"
        if answer["score"] < self.config.review_below:
            return "low_confidence"
        return "sample" if self.random.random() < self.config.review_sample else None

    def record(self, text: str, answer: dict, reason: str) -> dict:
        predicted = answer["labels"] if "labels" in answer else answer["label"]
        scores = dict(list(answer["scores"].items())[:SCORES_KEPT])
        scope = {k: answer[k] for k in ("out_of_scope", "in_scope") if k in answer}  # bundles with a detector
        return {"text": text, "predicted": predicted, "score": answer["score"], "scores": scores, **scope,
                "reason": reason, "model": self.model, "version": self.version,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._rotate_if_full(len(data))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _rotate_if_full(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.config.review_max_mb * 1e6:
            return
        if self.config.review_backups == 0:
            self.path.unlink()
            return
        for i in range(self.config.review_backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
