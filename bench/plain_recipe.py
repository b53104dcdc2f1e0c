"""The baseline a user would copy from a tutorial: Trainer defaults, padding per batch, no extras.

Used only by the training benchmark, as the reference our recipe must match in accuracy and beat in
throughput. Deliberately plain: no warm-up, no weight decay, no length grouping, no validation,
no early stopping, truncation at the tokenizer's own maximum.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run(splits, model_path: str, out_dir: Path, epochs: float = 2, batch_size: int = 32, lr: float = 5e-5,
        seed: int = 13) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from training.data import label_ids
    from training.scores import headline

    labels = splits.labels
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(labels))
    train = splits.train if splits.validation_carved is False else _concat(splits.train, splits.validation)

    def dataset(frame):
        ds = Dataset.from_dict({"text": frame["text"].tolist(), "labels": label_ids(frame, labels)})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])

    args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                             per_device_eval_batch_size=64, learning_rate=lr, seed=seed, report_to="none",
                             save_strategy="no", disable_tqdm=False, logging_steps=50, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train), processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    preds = np.asarray(trainer.predict(dataset(splits.test)).predictions).argmax(axis=1)
    test = headline(label_ids(splits.test, labels), preds)
    return {"test": test, "train_seconds": round(seconds, 1), "train_examples": len(train), "epochs": trainer.state.epoch,
            "samples_per_second": round(trainer.state.epoch * len(train) / seconds, 2)}  # same formula as ours


def _concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)
