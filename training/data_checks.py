"""The checks a dataset passes before training, and the label keys they read: every mistake raises DataError with
one line naming the file or split, the column and a count, so a user can fix the data without a traceback."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from training.data_sources import DataError, Raw

# A wrong --label-separator splits nothing; if the labels hold one of these instead, it is the likely joiner.
JOINERS = "|,;/"


def check_label_options(separator: str | None, columns: list[str] | None) -> None:
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


def holds_lists(raws: dict[str, Raw], column: str) -> bool:
    """A label column of lists (JSON arrays; pandas reads Parquet lists as arrays) is multi-label by its type."""
    return any(isinstance(v, (list, tuple, np.ndarray))
               for raw in raws.values() if column in raw.frame.columns for v in raw.frame[column].tolist())


def check_split(raw: Raw, text_column: str, label_column: str, multi: bool = False, separator: str | None = None,
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
    return list(zip(texts, keys, strict=True))


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


def check_separator(raws: dict[str, Raw], label_column: str, separator: str) -> None:
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


def check_positives(columns: list[str], train_keys: set, where: str, rows: int) -> None:
    """--label-columns: a label with no positive train row cannot be learned; its column is likely a mistake."""
    never = [c for c in columns if ("str", str(c)) not in train_keys]
    if never:
        names = ", ".join(repr(c) for c in never[:5]) + (", ..." if len(never) > 5 else "")
        raise DataError(f"{where}: {len(never)} label(s) never occur positive in train "
                        f"({names}: 0 in all {rows} rows); drop them from --label-columns")


def check_label_kinds(checked: dict[str, list], raws: dict[str, Raw]) -> None:
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


def sort_key(key: tuple):
    return key[1]  # integers numerically (2 before 10), strings alphabetically; kinds never mix here


def label_name(key: tuple) -> str:
    return str(key[1])


def order_labels(keys: set, preferred: list | None) -> list[str]:
    names = [label_name(k) for k in sorted(keys, key=sort_key)]
    if preferred:
        present = set(names)
        return [n for n in preferred if n in present]
    return names


def labelled_frame(rows: list[tuple[str, tuple]], labels: list[str], multi: bool) -> pd.DataFrame:
    """The checked rows as the `text`/`label` frame every caller sees: a name, or a tuple in label order."""
    if multi:
        position = {name: i for i, name in enumerate(labels)}
        label = [tuple(sorted(map(label_name, keys), key=position.__getitem__)) for _, keys in rows]
    else:
        label = [label_name(keys[0]) for _, keys in rows]
    return pd.DataFrame({"text": [t for t, _ in rows], "label": label})


def _rows(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
