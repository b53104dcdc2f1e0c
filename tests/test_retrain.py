"""textclf.pipelines.retrain on the tiny RoBERTa run: the feedback merge (feedback wins, test untouched), the gate's
rules, a whole compare-only retrain with its report, and the line saying what a retrain did on the server."""
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
from textclf.pipelines.retrain import RetrainConfig, gate, merge, outcome, read_feedback
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
