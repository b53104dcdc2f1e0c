"""textclf.pipelines.retrain on the tiny RoBERTa run: the feedback merge (feedback wins, test untouched), the gate's
rules, a whole compare-only retrain with its report, out-of-scope feedback learnt as the out-of-scope class and
both models scored as served, each with its own labels, and the line saying what a retrain did on the server."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

import training.export
from tests.test_train import STRING_LABELS, one_torch_thread, shared_run
from textclf.core.errors import Failure, UserError
from textclf.pipelines import retrain
from textclf.pipelines.retrain import Measured, RetrainConfig, gate, merge, outcome, read_feedback, scores
from textclf.torchserve import ops
from textclf.torchserve.errors import TorchServeError


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
    assert dict(zip(merged["text"], merged["label"], strict=False)) == {"a": "neg", "c": "pos", "b": "pos", "d": "mid"}
    path = tmp_path / "f.csv"
    path.write_text("text,label\nx,pos\nx,neg\n ,pos\n")
    assert read_feedback(path, STRING_LABELS).values.tolist() == [["x", "neg"]]  # the last answer wins
    path.write_text("text,label\nx,unknown\n")
    with pytest.raises(UserError, match=r"labels \['unknown'\] are not the model's"):
        read_feedback(path, STRING_LABELS)
    path.write_text("text,label\nx,out_of_scope\ny,pos\n")  # the review's "none of these"
    assert read_feedback(path, STRING_LABELS, "out_of_scope").values.tolist() == [["x", "out_of_scope"], ["y", "pos"]]
    with pytest.raises(UserError, match=r"labels \['out_of_scope'\] are not the model's"):
        read_feedback(path, STRING_LABELS, "none")


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
    assert report["outcome"] == "gate passed; not promoted: no --name and --version given (compare only)"
    assert report["test"]["champion"]["samples"] == report["test"]["challenger"]["samples"] == 12
    saved = json.loads((out / "report" / "comparison.json").read_text())
    assert saved["gate"] == report["gate"] and saved["outcome"] == report["outcome"]
    assert (out / "report" / "comparison.md").read_text().endswith(report["outcome"] + "\n")
    trained = pd.read_csv(out / "data" / "retrain" / "train.csv")
    assert test_text not in set(trained["text"])
    assert sum(t.startswith("reviewed text") for t in trained["text"]) == fb["used_for_training"]
    assert json.loads((out / "run.json").read_text())["config"]["out_of_scope_label"] is None  # none in the feedback


FAR = "qqq zzz xxxx vvvv {} %%%% ####"  # tokens the tiny model never saw together


def test_out_of_scope_feedback_is_learnt_as_the_out_of_scope_class(champion, tmp_path):
    feedback = tmp_path / "feedback.csv"
    rows = [(f"reviewed text {i}", STRING_LABELS[i % 3]) for i in range(6)] + [(FAR.format(i), "out_of_scope")
                                                                                for i in range(8)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(feedback, index=False)
    out = tmp_path / "next"
    report = retrain.main(RetrainConfig(run=champion / "run", feedback=feedback, output_dir=out, holdout_fraction=0.5,
                                        tolerance=100, max_label_drop=100, max_steps=1))
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["out_of_scope_label"] == "out_of_scope" and report["challenger_learnt_out_of_scope"]
    assert meta["labels"] == ["mid", "neg", "out_of_scope", "pos"] and meta["out_of_scope"]["oos_class"] == 2
    fb = report["feedback"]
    assert fb["out_of_scope_used_for_training"] > 0 and fb["out_of_scope_held_out"] > 0
    assert fb["out_of_scope_used_for_training"] + fb["out_of_scope_held_out"] == 8
    for who in ("champion", "challenger"):
        held = report["feedback_holdout"][who]
        assert held["out_of_scope_texts"] == fb["out_of_scope_held_out"] and 0 <= held["out_of_scope_recall"] <= 1
        # The gate stays over the champion's in-scope labels: the challenger's new class is no intent.
        assert list(report["test"][who]["per_label_f1"]) == STRING_LABELS
        assert "out_of_scope_recall" not in report["test"][who]  # the test split has no out-of-scope texts
    assert "Out-of-scope recall on feedback_holdout (" in (out / "report" / "comparison.md").read_text()


class Trained(Exception):
    """Raised in place of training: the test has seen the challenger's config."""


def test_a_champion_that_learnt_out_of_scope_keeps_one_such_class(champion, tmp_path, monkeypatch):
    # As if the champion had learnt "mid" as its out-of-scope class; the feedback's file calls those texts "none".
    run = shutil.copytree(champion / "run", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["out_of_scope"].update(label="mid", oos_class=0)
    meta["config"].update(out_of_scope_detector="max_prob", in_scope_coverage=0.9)  # its recipe, copied
    (run / "run.json").write_text(json.dumps(meta))
    feedback = tmp_path / "feedback.csv"
    rows = [(FAR.format(i), "none") for i in range(4)] + [("reviewed text", "pos")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(feedback, index=False)
    configs = []

    def train(config):
        configs.append(config)
        raise Trained

    monkeypatch.setattr(retrain.train, "main", train)
    out = tmp_path / "next"
    with pytest.raises(Trained):
        retrain.main(RetrainConfig(run=run, feedback=feedback, output_dir=out, holdout_fraction=0.0,
                                   out_of_scope_label="none"))
    assert configs[0].out_of_scope_label == "mid"
    assert configs[0].out_of_scope_detector == "max_prob" and configs[0].in_scope_coverage == 0.9
    trained = pd.read_csv(out / "data" / "retrain" / "train.csv")
    assert set(trained.loc[trained["text"].str.startswith("qqq"), "label"]) == {"mid"}  # joined the champion's class
    # Measured as served: the champion's "mid" texts are out-of-scope texts, and no label of the gate.
    test = pd.read_parquet(run / "data" / "test.parquet")
    got = scores(run, test, Measured(["neg", "pos"], "mid"))
    assert list(got["per_label_f1"]) == ["neg", "pos"] and got["out_of_scope_texts"] == 4


def without_detector(run, dest):
    """A copy of the run as one trained before out-of-scope detection: answers are the argmax."""
    copy = shutil.copytree(run, dest)
    meta = json.loads((copy / "run.json").read_text())
    del meta["out_of_scope"]
    (copy / "run.json").write_text(json.dumps(meta))
    (copy / "out_of_scope.npz").unlink()
    return copy


def with_a_first_label(run, dest):
    """A copy of the run with one more label, "aaa", first in sorted order and never predicted (logit -1e4): every
    other label's id moves up by one, as a challenger's do when it learnt a class that sorts before them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    copy = shutil.copytree(run, dest)
    model = AutoModelForSequenceClassification.from_pretrained(copy / "model")
    head = model.classifier.out_proj  # RoBERTa's output layer
    wider = torch.nn.Linear(head.in_features, head.out_features + 1)
    with torch.no_grad():
        wider.weight[0], wider.bias[0] = 0.0, -1e4
        wider.weight[1:], wider.bias[1:] = head.weight, head.bias
    model.classifier.out_proj = wider
    meta = json.loads((copy / "run.json").read_text())
    meta["labels"] = ["aaa", *meta["labels"]]
    model.config.id2label = dict(enumerate(meta["labels"]))
    model.config.label2id = {name: i for i, name in enumerate(meta["labels"])}
    model.save_pretrained(copy / "model")
    (copy / "run.json").write_text(json.dumps(meta))
    return copy


def test_scores_read_each_run_with_its_own_labels(champion, tmp_path):
    plain = without_detector(champion / "run", tmp_path / "plain")
    shifted = with_a_first_label(plain, tmp_path / "shifted")
    test = pd.read_parquet(plain / "data" / "test.parquet")
    measured = Measured(STRING_LABELS, "out_of_scope")
    assert scores(shifted, test, measured) == scores(plain, test, measured)


def test_scores_answer_out_of_scope_as_served(champion, tmp_path):
    run = shutil.copytree(champion / "run", tmp_path / "run")
    frame = pd.DataFrame({"text": [FAR.format(i) for i in range(4)], "label": "out_of_scope"})
    measured = Measured(STRING_LABELS, "out_of_scope")
    meta = json.loads((run / "run.json").read_text())
    for threshold, recall in ((0.999, 1.0), (0.0, 0.0)):  # rejects (almost) every text; none
        meta["out_of_scope"]["threshold"] = threshold
        (run / "run.json").write_text(json.dumps(meta))
        got = scores(run, frame, measured)
        assert got["out_of_scope_texts"] == 4 and got["out_of_scope_recall"] == recall
        assert got["accuracy"] == recall  # an out-of-scope text is right only when answered out of scope


def test_changed_champion_data_is_refused(champion, tmp_path):
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


# ---- what a retrain did on the server ------------------------------------------------------------------------------
class FakeServer:
    """ops.main for the verbs promote uses: `default` is the version unversioned requests reach (None: the model
    is not registered); `fail` names a verb that TorchServe refuses."""

    def __init__(self, default: str | None = "1.0", fail: type | None = None):
        self.default, self.fail, self.calls = default, fail, []

    def __call__(self, config):
        self.calls.append(type(config).__name__)
        if type(config) is self.fail:
            raise TorchServeError(500, "boom")
        if isinstance(config, ops.ModelsConfig):
            if self.default is None:
                raise TorchServeError(404, f"Model not found: {config.name}", "ModelNotFoundException")
            return [{"modelVersion": self.default}]
        if isinstance(config, ops.RegisterConfig):
            return {"status": "registered", "workers": 2}
        self.default = config.version
        return {"status": "Default version updated"}


@pytest.fixture
def promotion(champion, tmp_path, monkeypatch):
    """promote() with export and archive faked, and the server as a FakeServer (set `.server`)."""
    monkeypatch.setattr(training.export, "main", lambda config: None)
    monkeypatch.setattr(retrain, "ArchiveConfig", SimpleNamespace)  # the real one checks the (absent) bundle
    monkeypatch.setattr(retrain, "build_archive", lambda config: config.store / f"{config.name}-{config.version}.mar")
    feedback = tmp_path / "f.csv"
    feedback.write_text("text,label\nx,pos\n")
    config = RetrainConfig(run=champion / "run", feedback=feedback, output_dir=tmp_path / "next", name="clf",
                           version="2.0")
    config.target.model_store = lambda: tmp_path / "store"

    def promote(server: FakeServer) -> dict:
        monkeypatch.setattr(ops, "main", server)
        return retrain.promote(config, tmp_path / "next")

    return config, promote


def test_a_promotion_says_what_it_registered_and_how_to_roll_back(promotion, tmp_path):
    config, promote = promotion
    server = FakeServer(default="1.0")
    promoted = promote(server)
    assert server.calls == ["ModelsConfig", "RegisterConfig", "SetDefaultConfig"] and server.default == "2.0"
    line = outcome({"gate": {"promote": True, "reasons": []}, "promoted": promoted}, config)
    assert line == (f"promoted: registered clf 2.0 ({tmp_path}/store/clf-2.0.mar, 2 worker(s) READY) and made it the "
                    "default version (was 1.0; roll back with `textclf set-default --name clf --version 1.0` or "
                    "`make set-default NAME=clf VERSION=1.0`)")
    first = promote(FakeServer(default=None))  # the model's first version: nothing to roll back to
    assert outcome({"gate": {"promote": True, "reasons": []}, "promoted": first}, config).endswith(
        "and made it the default version")


@pytest.mark.parametrize("fail, says", [
    (ops.RegisterConfig, r"^the gate passed and .*clf-2\.0\.mar was built, but registering clf 2\.0 failed: TorchServe 500"),
    (ops.SetDefaultConfig, r"^registered clf 2\.0, but making it the default failed \(unversioned requests still reach "
                           r"1\.0\): TorchServe 500"),
])
def test_a_failed_promotion_says_which_steps_were_done(promotion, fail, says):
    _, promote = promotion
    with pytest.raises(Failure, match=says):
        promote(FakeServer(default="1.0", fail=fail))


def test_a_failed_gate_says_nothing_changed(promotion):
    config, _ = promotion
    failed = {"gate": {"promote": False, "reasons": ["test macro-F1 70.00 is 2.00 points below the champion's 72.00 "
                                                     "(tolerance 0)"]}}
    assert outcome(failed, config) == ("gate failed: kept the champion (test macro-F1 70.00 is 2.00 points below the "
                                       "champion's 72.00 (tolerance 0)); nothing changed on the server")
