"""The plain Hugging Face multi-label recipe: the reference our multi-label training must beat.

What a user writes from the transformers documentation: `problem_type="multi_label_classification"`
(a sigmoid per label and binary cross-entropy), float 0/1 label vectors, a fixed 0.5 threshold, Trainer
defaults otherwise (no warm-up, no weight decay, no length grouping, no validation, no early stopping),
padding per batch, truncation at the tokenizer's own maximum. Modelled on bench/plain_recipe.py, the
single-label reference. Used only by bench/multilabel_bench.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

THRESHOLD = 0.5  # the documented default; tuning it would no longer be the plain recipe


def run(train_texts: list[str], train_y: np.ndarray, test_texts: list[str], test_y: np.ndarray, model_path: str,
        out_dir: Path, epochs: float = 5, batch_size: int = 32, lr: float = 1e-4, seed: int = 13,
        max_steps: int = -1) -> dict:
    """Fine-tune on (train_texts, train_y), a 0/1 matrix [texts, labels]; score the test set with f1_scores.
    `max_steps` exists for the tests' tiny models; the benchmark trains whole epochs."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from training.scores import f1_scores

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=train_y.shape[1], problem_type="multi_label_classification")
    args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=epochs, max_steps=max_steps,
                             per_device_train_batch_size=batch_size, per_device_eval_batch_size=64, learning_rate=lr,
                             seed=seed, report_to="none", save_strategy="no", disable_tqdm=False, logging_steps=50,
                             use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tokenizer, train_texts, train_y),
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logits = np.asarray(trainer.predict(_dataset(tokenizer, test_texts, test_y)).predictions)
    preds = (1 / (1 + np.exp(-logits)) >= THRESHOLD).astype(int)
    return {"test": f1_scores(test_y, preds), "train_seconds": round(seconds, 1), "train_examples": len(train_texts),
            "epochs": trainer.state.epoch,
            "samples_per_second": round(trainer.state.epoch * len(train_texts) / seconds, 2)}  # same formula as ours


def _dataset(tokenizer, texts: list[str], y: np.ndarray):
    from datasets import Dataset

    # BCE needs float targets: integer 0/1 vectors make the loss fail with a dtype error.
    ds = Dataset.from_dict({"text": list(texts), "labels": np.asarray(y, dtype=np.float32).tolist()})
    return ds.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])
