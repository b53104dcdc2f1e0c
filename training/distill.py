"""Knowledge distillation: train a small student on the soft answers of a fine-tuned teacher.

    python -m training.distill --teacher runs/teacher --data DIR --output-dir runs/student
                               [--model DIR|ID | --student-layers 0,2,4] [--alpha 0.5] [--temperature 2]
                               [--noisy-copies K] [--hidden-weight B]
                               [every option of training.train: --epochs, --max-train-samples, columns, ...]

The loss (Hinton et al., 2015) mixes the hard labels with the teacher's softened distribution:

    alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

T^2 keeps the soft term's gradients on the same scale as the hard term's whatever T is. It is training.train
with three things changed, and nothing else: the student (any encoder via --model, or a copy of some of the
teacher's layers with its embeddings and head, as DistilBERT was initialised), each training row's target
(its label followed by the teacher's logits, so rows and teacher answers cannot come apart through
shuffling, length grouping or column pruning), and the loss (the trainer's one loss override). Teacher
logits are computed once per training text with the teacher's own tokenizer, so teacher and student may
tokenize differently, and are cached in the run directory keyed by the data fingerprint and the teacher's
weights hash. --noisy-copies K adds K copies of every training text with a few words dropped or swapped,
each answered by the teacher: a teacher has nearly memorised the texts it was trained on, so on those its soft
labels say little more than the hard ones, while on texts it has not seen they carry its judgement (the data
augmentation of TinyBERT, Jiao et al., 2020, without its word-vector replacements). A copy keeps its text's
label; an epoch covers the copies too. --hidden-weight B (a layer-copied student only) also pulls each student
layer's output towards the teacher's at the same relative depth, B x their mean squared distance per token
(the intermediate-layer term of TinyBERT, without its attention term): the logits say what the teacher
decided, the hidden states how it got there, which a student holding half its layers has to relearn. Those
states are too large to cache, so the teacher runs beside the student on every training batch. A student run
is an ordinary run: the same report, export, archive and serving. Single-label only: a multi-label teacher is
refused.
"""
from __future__ import annotations

import logging
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handlers.bundle import sha256_file
from handlers.checks import check_int
from textclf.core.errors import UserError
from textclf.core.options import option, run
from training import train
from training.problems import Objective
from training.report import predict_probs
from training.rundir import RunDir
from training.train import EMBEDDED_MODEL, TrainConfig, world_size

log = logging.getLogger(__name__)
# Encoder layers are numbered in their parameter names: bert.encoder.layer.3., roberta.encoder.layer.3.,
# mpnet.encoder.layer.3., distilbert.transformer.layer.3.
LAYER_KEY = re.compile(r"(\.layer\.)(\d+)(\.)")
# A layer-copied student's hidden-state term weight unless --hidden-weight says otherwise. Chosen on validation
# accuracy (rt-polarity, 3 of MiniLM-L6's 6 layers): 1 beat 0 with three seeds (85.00% vs 84.48%, 83.23% vs
# 82.50%, 82.60% vs 82.50%), and beat 3 and a [CLS]-only variant (bench/JOURNAL.md has the runs and their test
# accuracies).
LAYER_STUDENT_HIDDEN_WEIGHT = 1.0


def parse_layers(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated layer numbers such as 0,2,4, got {text!r}") from None
    return layers


@dataclass
class DistillConfig:
    """Distil a fine-tuned teacher run into a smaller student (any encoder, or some of the teacher's layers)."""

    teacher: str = option("run directory of the fine-tuned teacher (training.train or training.distill)")
    train: TrainConfig = option("the student's training: every option of training.train")
    student_layers: list | None = option(
        "build the student from these teacher encoder layers (e.g. 0,2,4) plus its embeddings and head, "
        "instead of --model", None, parse=parse_layers)
    alpha: float = option("weight of the hard-label cross-entropy; 1 - alpha goes to the teacher's soft labels", 0.5)
    temperature: float = option("softmax temperature of the soft labels (both teacher and student)", 2.0)
    noisy_copies: int = option("add this many copies of each training text with words dropped or swapped, "
                               "answered by the teacher (each costs one teacher pass and one more row per epoch)", 0)
    hidden_weight: float | None = option(
        "weight of the hidden-state term: the squared distance between each student layer's output and the "
        "teacher's at the same relative depth, per token; runs the teacher on every training batch (about 1.4x "
        "the training time of a 3-of-6-layer student). Only with --student-layers, where it defaults to "
        f"{LAYER_STUDENT_HIDDEN_WEIGHT:g}; 0 turns it off", None)

    def __post_init__(self):
        RunDir(self.teacher).check_finished()
        if not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        check_int("--noisy-copies", self.noisy_copies, 0, error=UserError)
        if self.hidden_weight is None:
            self.hidden_weight = 0.0 if self.student_layers is None else LAYER_STUDENT_HIDDEN_WEIGHT
        if self.hidden_weight < 0:
            raise UserError(f"--hidden-weight must be 0 or more, got {self.hidden_weight}")
        if self.hidden_weight and self.student_layers is None:  # a --model student may differ in width and tokens
            raise UserError("--hidden-weight compares the student's layers with its teacher's: it needs a student "
                            "built with --student-layers (same tokenizer and width)")
        if world_size() > 1:  # the student's weights and the teacher's logits are built and cached in one process
            raise UserError("training.distill runs in one process; start it without torchrun")
        if self.train.refit:  # the cached teacher logits cover the training rows only
            raise UserError("--refit is not available with distillation: the teacher's logits are cached for train only")
        if self.student_layers is not None:
            if self.train.model != EMBEDDED_MODEL:
                raise UserError("give the student as --model or as --student-layers, not both")
            if not self.student_layers or len(set(self.student_layers)) != len(self.student_layers):
                raise UserError(f"--student-layers must name distinct layers, got {self.student_layers}")

    def settings(self) -> dict:
        """What makes one distillation differ from another, beside its training options: run.json records it
        (Distillation.record) and a benchmark reuses a finished run only when it matches."""
        return {"teacher": self.teacher, "alpha": self.alpha, "temperature": self.temperature,
                "student_layers": self.student_layers, "noisy_copies": self.noisy_copies,
                "hidden_weight": self.hidden_weight}


def distillation_loss(student, teacher, labels, alpha: float, temperature: float, weight=None):
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    import torch.nn.functional as F  # imported here: `textclf distill --help` does without torch

    hard = F.cross_entropy(student.float(), labels, weight=weight)
    if alpha == 1:
        return hard
    soft = F.kl_div(F.log_softmax(student.float() / temperature, dim=-1),
                    F.log_softmax(teacher.float() / temperature, dim=-1), reduction="batchmean", log_target=True)
    return alpha * hard + (1 - alpha) * temperature ** 2 * soft


def layer_pairs(student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """Which teacher layer's output each student layer's output is pulled towards: the one at the same relative
    depth (TinyBERT's uniform mapping), so the last student layer meets the teacher's last, the one its
    copied head reads. Layers numbered from 0, as --student-layers numbers them: 3 of 6 gives (0,1) (1,3) (2,5)."""
    return [(k, round((k + 1) * teacher_depth / student_depth) - 1) for k in range(student_depth)]


def hidden_state_loss(student_states, teacher_states, mask, pairs):
    """Mean over `pairs` of the squared distance between a student layer's output and its teacher layer's,
    per real token and dimension (padding is masked out). `*_states`: the models' `hidden_states`, whose entry
    0 is the embeddings, so layer k's output is entry k + 1."""
    weights = mask.unsqueeze(-1).float()
    count = weights.sum() * student_states[0].shape[-1]
    return sum((((student_states[s + 1].float() - teacher_states[t + 1].float()) ** 2) * weights).sum() / count
               for s, t in pairs) / len(pairs)


class DistilledLoss(Objective):
    """The trainer's objective for rows whose target is [label, teacher logits...]. Validation rows carry the
    label alone and get the task's own loss, so early stopping watches the real task. With a `teacher` model and
    `hidden_weight` > 0, each training batch also runs the teacher and adds the hidden-state term."""

    def __init__(self, problem, alpha: float, temperature: float, teacher=None, hidden_weight: float = 0.0):
        self.problem, self.alpha, self.temperature = problem, alpha, temperature
        self.teacher, self.hidden_weight = teacher, hidden_weight

    def loss(self, logits, targets, weight=None):
        if targets.dim() == 1:
            return self.problem.loss(logits, targets, weight)
        return distillation_loss(logits, targets[:, 1:], targets[:, 0].long(), self.alpha, self.temperature, weight)

    def forward_loss(self, model, inputs: dict, targets, weight=None):
        import torch  # imported here: `textclf distill --help` does without torch
        if targets.dim() == 1 or not self.hidden_weight:
            return super().forward_loss(model, inputs, targets, weight)

        outputs = model(**inputs, output_hidden_states=True)
        self.teacher.to(outputs.logits.device)  # a no-op after the first batch
        with torch.no_grad():
            taught = self.teacher(**inputs, output_hidden_states=True).hidden_states
        pairs = layer_pairs(len(outputs.hidden_states) - 1, len(taught) - 1)
        hidden = hidden_state_loss(outputs.hidden_states, taught, inputs["attention_mask"], pairs)
        outputs.hidden_states = None  # the Trainer would otherwise carry them along with the logits
        return self.loss(outputs.logits, targets, weight) + self.hidden_weight * hidden, outputs


def student_from_layers(teacher_dir: Path, layers: list[int], out_dir: Path) -> Path:
    """Save a student holding exactly the chosen teacher layers (renumbered 0..k-1), the teacher's embeddings,
    head and tokenizer, into out_dir; loading it strictly proves every weight came from the teacher."""
    import torch  # imported here: `textclf distill --help` does without torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # imported here: it loads torch

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    depth = teacher.config.num_hidden_layers
    if any(not 0 <= i < depth for i in layers):
        raise UserError(f"--student-layers {','.join(map(str, layers))}: the teacher has layers 0..{depth - 1}")
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    renumber = {str(src): str(dst) for dst, src in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = LAYER_KEY.search(key)
        if match is None:
            state[key] = value
        elif match.group(2) in renumber:
            state[LAYER_KEY.sub(lambda m: f"{m.group(1)}{renumber[m.group(2)]}{m.group(3)}", key, count=1)] = value
    with torch.device("meta"):  # no point initialising weights that are all replaced
        student = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(state, strict=True, assign=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out_dir)
    return out_dir


def noisy_copies(texts: list[str], copies: int, seed: int) -> list[str]:
    """`copies` noisy versions of each text, copy by copy: each drops about 15% of its words or swaps about
    one adjacent pair in ten (a coin toss per text). Texts under four words are kept as they are, since
    dropping a word there often changes what they say. Seeded: the same call gives the same texts."""
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            if len(words) >= 4:
                if rng.random() < 0.5:
                    kept = [w for w in words if rng.random() > 0.15]
                    words = kept if len(kept) >= 2 else words
                else:
                    for _ in range(max(1, len(words) // 10)):
                        i = rng.randrange(len(words) - 1)
                        words[i], words[i + 1] = words[i + 1], words[i]
            out.append(" ".join(words))
    return out


def teacher_logits(teacher: RunDir, texts: list[str], cache: Path) -> np.ndarray:
    """The teacher's logits [texts, labels], computed once with its own tokenizer and max_length, then read back."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # imported here: it loads torch
    if cache.is_file():
        log.info("teacher logits from %s", cache)
        return np.load(cache)


    model = AutoModelForSequenceClassification.from_pretrained(teacher.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher.model_dir)
    log.info("teacher pass over %d training texts", len(texts))
    logits = predict_probs(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits, tokenizer, texts,
                           int(teacher.read_run()["max_length"]), 64, activation=lambda x: x)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, logits)
    os.replace(partial, cache)  # a killed run never leaves a half-written cache to be trusted next time
    return logits


class Distillation:
    """What training.train changes for a student run (see its `student` argument)."""

    def __init__(self, config: DistillConfig):
        self.config, self.teacher = config, RunDir(config.teacher)
        self.teacher_run = run = self.teacher.read_run()
        if run.get("problem_type", "single_label_classification") != "single_label_classification":
            raise UserError(f"{config.teacher}: distillation supports single-label teachers; this one is {run['problem_type']}")
        self.labels = self.teacher.read_labels()

    def model_path(self, out: RunDir, default: str) -> str:
        if self.config.student_layers is None:
            return default
        return str(student_from_layers(self.teacher.model_dir, self.config.student_layers, out.student_init_dir))

    def train_rows(self, out: RunDir, splits, train, hard: np.ndarray):
        """The training rows (with --noisy-copies, the copies after the texts) and their targets,
        [label, teacher logits...] per row."""
        if splits.labels != self.labels:
            raise UserError(f"the data's labels {splits.labels[:5]} differ from the teacher's {self.labels[:5]}: "
                            "distil on data with the teacher's label set")

        teacher_sha, texts = sha256_file(self.teacher.weights_file), train["text"].tolist()
        soft = teacher_logits(self.teacher, texts, out.teacher_logits_file(splits.fingerprint, teacher_sha))
        copies, seed = self.config.noisy_copies, self.config.train.seed
        if copies:  # cached apart from the texts' own answers, so changing the number of copies reuses those
            noisy = noisy_copies(texts, copies, seed)
            cache = out.teacher_logits_file(splits.fingerprint, teacher_sha, f"noisy{copies}-seed{seed}")
            soft = np.concatenate([soft, teacher_logits(self.teacher, noisy, cache)])
            train = train.iloc[np.tile(np.arange(len(train)), copies + 1)].reset_index(drop=True)
            train["text"] = texts + noisy
            hard = np.tile(hard, copies + 1)
            log.info("%d noisy copies of each of %d training texts: %d rows", copies, len(texts), len(train))
        return train, np.concatenate([hard.reshape(-1, 1).astype(np.float32), soft.astype(np.float32)], axis=1)

    def loss(self, problem) -> DistilledLoss:
        from transformers import AutoModelForSequenceClassification  # imported here: it loads torch
        teacher = None
        if self.config.hidden_weight:  # run beside the student: its hidden states are too large to cache

            teacher = AutoModelForSequenceClassification.from_pretrained(self.teacher.model_dir)
            teacher.eval().requires_grad_(False)
        return DistilledLoss(problem, self.config.alpha, self.config.temperature, teacher, self.config.hidden_weight)

    def record(self) -> dict:
        """run.json's `distillation` entry; summary shows student vs teacher from it."""
        from transformers import AutoConfig  # imported here: it loads torch
        pairs = None
        if self.config.hidden_weight:

            depth = AutoConfig.from_pretrained(self.teacher.model_dir).num_hidden_layers
            pairs = layer_pairs(len(self.config.student_layers), depth)
        return {**self.config.settings(), "teacher": str(self.teacher.path),
                "teacher_model": self.teacher_run.get("base_model"), "hidden_layer_pairs": pairs}


def main(config: DistillConfig) -> dict:

    return train.main(config.train, student=Distillation(config))


def command(argv=None, prog="python -m training.distill") -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(main, DistillConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
