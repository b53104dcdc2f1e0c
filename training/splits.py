"""Deterministic train/validation/test splits: carving a missing split, stratified (single- and multi-label, never
losing a label from train), the quick-run limits, and the fingerprint of what a run trains and is scored on."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data_sources import DataError

log = logging.getLogger(__name__)

# The test split is carved with this constant, not with `seed`: runs that differ only in their
# training seed are then scored on the same held-out rows and their metrics stay comparable.
TEST_SPLIT_SEED = 13


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]  # index = class id
    source: str
    fingerprint: str  # sha256 of the normalised contents of all three splits, limits applied
    validation_carved: bool
    multi_label: bool = False  # `label` holds a tuple of names per row (see the module docstring)


def at_most(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of `n` rows, or `frame` unchanged when it has no more than `n`."""
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    # One stream per purpose, so carving validation does not shift the rows a subset draws.
    return np.random.default_rng([seed, int.from_bytes(purpose.encode(), "little")])


def carve(train: pd.DataFrame, fraction: float, seed: int, where: str, split: str,
          multi: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = _rng(seed, split)
    strata, pinned, staying = _strata(train, multi, rng)
    spare = len(train) - staying  # rows that can leave train while every label keeps one
    if spare < 1:
        classes = len({name for names in train["label"] for name in names}) if multi else train["label"].nunique()
        raise DataError(f"{where}: {len(train)} rows for {classes} classes is too few to carve a {split} split; "
                        f"provide a {split} file")
    size = min(max(1, round(len(train) * fraction)), spare)
    return _stratified_split(train, size, rng, strata, pinned)


def _subsample(frame: pd.DataFrame, n: int, rng: np.random.Generator, multi: bool = False) -> pd.DataFrame:
    """A stratified subset of `n` rows, never losing a label that `frame` has."""
    strata, pinned, staying = _strata(frame, multi, rng)
    drop = min(len(frame) - n, len(frame) - staying)
    return _stratified_split(frame, drop, rng, strata, pinned)[0] if drop > 0 else frame


def _strata(frame: pd.DataFrame, multi: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(group per row, pinned rows, rows that must stay) for a stratified split of `frame`.

    Single-label: the group is the label and nothing is pinned; each class keeps one row (see below).
    Multi-label: the group is the row's rarest label ("" for rows without labels, a name no label has),
    so rare labels are spread like classes; a row's rarer labels say more about it than its common ones.
    Keeping one row per group would not keep every label (a label may never be a row's rarest), so
    rows that together hold every label are pinned instead, rarest label first, drawn with `rng`.
    """
    if not multi:
        return frame["label"].to_numpy(), None, frame["label"].nunique()
    rows = frame["label"].tolist()
    holders = {}  # label -> the rows that hold it
    for i, names in enumerate(rows):
        for name in names:
            holders.setdefault(name, []).append(i)
    rarity = {name: (len(held), name) for name, held in holders.items()}
    strata = np.array([min(names, key=rarity.__getitem__) if names else "" for names in rows], dtype=object)
    pinned, covered = np.zeros(len(rows), dtype=bool), set()
    for name in sorted(holders, key=rarity.__getitem__):
        if name not in covered:
            row = rng.choice(holders[name])
            pinned[row] = True
            covered.update(rows[row])
    return strata, pinned, int(pinned.sum())


def _stratified_split(frame: pd.DataFrame, size: int, rng: np.random.Generator, strata: np.ndarray,
                      pinned: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move `size` rows out of `frame`, in proportion to the groups in `strata`, never a pinned row, and
    without `pinned` never a group's last row (single-label: no class leaves train).

    Returns (kept, taken), each in the original row order. Written out rather than using
    scikit-learn's stratified split, which refuses classes with a single row.
    """
    groups = {label: np.flatnonzero(strata == label) for label in sorted(pd.unique(strata))}
    free = {label: rows if pinned is None else rows[~pinned[rows]] for label, rows in groups.items()}
    cap = {label: len(rows) - 1 if pinned is None else len(rows) for label, rows in free.items()}
    total = len(frame)
    quota = {label: size * len(rows) / total for label, rows in groups.items()}
    take = {label: min(int(q), cap[label]) for label, q in quota.items()}
    # Hand out the rows lost to rounding by largest remainder, within each group's cap.
    order = sorted(groups, key=lambda label: (-(quota[label] - int(quota[label])), label))
    left = size - sum(take.values())
    while left > 0:
        for label in order:
            if left and take[label] < cap[label]:
                take[label] += 1
                left -= 1
    taken = np.sort(np.concatenate([rng.permutation(rows)[: take[label]] for label, rows in free.items()]))
    mask = np.zeros(total, dtype=bool)
    mask[taken] = True
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def fingerprint(labels: list[str], *frames: pd.DataFrame) -> str:
    """sha256 over labels and (text, label) rows of train, validation, test in order.

    A multi-label row's tuple becomes a JSON array, in label order: one label set, one fingerprint.
    """
    digest = hashlib.sha256(json.dumps(labels, ensure_ascii=False).encode())
    for name, frame in zip(("train", "validation", "test"), frames, strict=True):
        pairs = zip(frame["text"], frame["label"], strict=True)
        rows = "\n".join(json.dumps([text, label], ensure_ascii=False) for text, label in pairs)
        digest.update(f"\n#{name} {len(frame)}\n{rows}".encode())
    return digest.hexdigest()


def limit_train(splits: Splits, n: int, seed: int) -> None:
    """--max-train-samples: a stratified subset of train, and a carved validation split cut in proportion."""
    full, carved = len(splits.train), len(splits.validation)
    if n >= full:
        return
    splits.train = _subsample(splits.train, n, _rng(seed, "subset"), splits.multi_label)
    splits.source += f"; train subset of {len(splits.train)} rows"
    if len(splits.train) > n:
        log.info("--max-train-samples %d is fewer than the %d labels: train keeps one row of each label, %d rows",
                 n, len(splits.labels), len(splits.train))
    if not splits.validation_carved:
        # A validation file is the user's choice and stays whole; --max-eval-samples caps it.
        log.info("quick run: train %d of %d rows; the validation file is kept whole (%d rows)",
                 len(splits.train), full, carved)
        return
    # A carved validation split is a fraction of the whole file: next to a small train subset it would
    # cost more than the training (banking77 at 2,000 train rows: 1,000 texts, 18 s per evaluation).
    # Cut in the same ratio it keeps the file's validation:train proportion, and every label it had.
    target = round(carved * len(splits.train) / full)
    splits.validation = _subsample(splits.validation, target, _rng(seed, "validation subset"), splits.multi_label)
    splits.source += f"; validation cut in proportion to {len(splits.validation)} rows"
    log.info("quick run: train %d of %d rows, carved validation cut in the same ratio to %d of %d rows%s",
             len(splits.train), full, len(splits.validation), carved,
             " (one per label, at least)" if len(splits.validation) > target else "")


def limit_eval(splits: Splits, n: int, seed: int) -> None:
    """--max-eval-samples: a seeded sample of validation and of test, for quick runs."""
    if len(splits.validation) > n:
        splits.validation = at_most(splits.validation, n, seed)
        splits.source += f"; validation sample of {n} rows (seed {seed})"
    if len(splits.test) > n:
        # The test sample ignores the training seed, like the carved test split: comparable runs.
        splits.test = at_most(splits.test, n, TEST_SPLIT_SEED)
        splits.source += f"; test sample of {n} rows (seed {TEST_SPLIT_SEED})"
