"""training.retrain on the tiny RoBERTa run: the feedback merge (feedback wins, test untouched), the gate's
rules, and a whole compare-only retrain with its report."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cli import UserError
from tests.test_train import STRING_LABELS, one_torch_thread, shared_run
from training import retrain
from training.retrain import RetrainConfig, gate, merge, read_feedback


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def champion(tmp_path_factory, tiny_roberta_dir):
    return shared_run("roberta", tmp_path_factory, tiny_roberta_dir)


def test_feedback_wins_and_is_checked(tmp_path):
    train = pd.DataFrame({"text": ["a", "b", "c"], "label": ["neg", "neg", "pos"]})
    feedback = pd.DataFrame({"text": ["b", "d"], "label": ["pos", "mid"]})
    merged = merge(train, feedback)
    assert dict(zip(merged["text"], merged["label"])) == {"a": "neg", "c": "pos", "b": "pos", "d": "mid"}
    path = tmp_path / "f.csv"
    path.write_text("text,label\nx,pos\nx,neg\n ,pos\n")
    assert read_feedback(path, STRING_LABELS).values.tolist() == [["x", "neg"]]  # the last answer wins
    path.write_text("text,label\nx,unknown\n")
    with pytest.raises(UserError, match=r"labels \['unknown'\] are not the model's"):
        read_feedback(path, STRING_LABELS)


def _scores(macro, per_label):
    return {"macro_f1": macro, "per_label_f1": per_label}


def test_gate_refuses_a_lower_macro_f1_or_a_collapsed_label():
    champion = _scores(0.80, {"a": 0.8, "b": 0.8})
    assert gate(champion, _scores(0.81, {"a": 0.85, "b": 0.77}), 0.0, 5.0)["promote"]
    lower = gate(champion, _scores(0.79, {"a": 0.8, "b": 0.78}), 0.0, 5.0)
    assert not lower["promote"] and "1.00 points below" in lower["reasons"][0]
    assert gate(champion, _scores(0.79, {"a": 0.8, "b": 0.78}), 2.0, 5.0)["promote"]  # within tolerance
    collapsed = gate(champion, _scores(0.85, {"a": 1.0, "b": 0.70}), 0.0, 5.0)
    assert not collapsed["promote"] and "b (-10.0)" in collapsed["reasons"][0]


def test_compare_only_retrain_writes_the_report_and_keeps_the_test_split(champion, tmp_path):
    feedback = tmp_path / "feedback.csv"
    test_text = pd.read_parquet(champion / "run" / "data" / "test.parquet")["text"].iloc[0]
    rows = [(f"reviewed text {i}", STRING_LABELS[i % 3]) for i in range(10)] + [(test_text, "pos")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(feedback, index=False)
    out = tmp_path / "next"
    report = retrain.main(RetrainConfig(run=champion / "run", feedback=feedback, output_dir=out, holdout_fraction=0.3,
                                        tolerance=100, max_label_drop=100, max_steps=1))
    fb = report["feedback"]
    assert fb["dropped_in_test"] == 1 and fb["used_for_training"] + fb["held_out"] == 10
    assert report["gate"]["promote"] and "promoted" not in report  # no --name: compare only
    assert report["test"]["champion"]["samples"] == report["test"]["challenger"]["samples"] == 12
    saved = json.loads((out / "report" / "comparison.json").read_text())
    assert saved["gate"] == report["gate"] and (out / "report" / "comparison.md").is_file()
    trained = pd.read_csv(out / "data" / "retrain" / "train.csv")
    assert test_text not in set(trained["text"])
    assert sum(t.startswith("reviewed text") for t in trained["text"]) == fb["used_for_training"]


def test_changed_champion_data_is_refused(champion, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(champion / "data", data)
    run = tmp_path / "run"
    shutil.copytree(champion / "run", run)
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["data"] = str(data)
    (run / "run.json").write_text(json.dumps(meta))
    (data / "train.csv").write_text((data / "train.csv").read_text() + "a brand new row,pos\n")
    feedback = tmp_path / "f.csv"
    feedback.write_text("text,label\nx,pos\n")
    with pytest.raises(UserError, match="changed since it was trained"):
        retrain.main(RetrainConfig(run=run, feedback=feedback, output_dir=tmp_path / "next"))
