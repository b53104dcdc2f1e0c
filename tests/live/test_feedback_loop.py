"""The feedback loop on a live TorchServe: review capture on the served champion, a scripted review, a retrain
whose challenger the gate promotes (its version becomes the default), and one it refuses (nothing changes); each
says so in its outcome line."""
import functools
import io
import json

import pytest

import training.export
from tests.test_train import one_torch_thread, shared_run
from textclf.pipelines import retrain
from textclf.pipelines.review import read_queue, review
from textclf.torchserve.archive import ArchiveConfig, build_archive
from textclf.torchserve.ops import Target
from training.export import ExportConfig
from training.export import main as export_main
from training.tiny import CORPUS

pytestmark = pytest.mark.live
LOOP = "loop"


@pytest.fixture(scope="module")
def served(live, tmp_path_factory, tiny_roberta_dir):
    """The shared tiny RoBERTa run, exported and served as loop 1.0 with review capture of every text."""
    with one_torch_thread():
        champion = shared_run("roberta", tmp_path_factory, tiny_roberta_dir)
        bundle = tmp_path_factory.mktemp("loop") / "export"
        export_main(ExportConfig(run_dir=str(champion / "run"), output_dir=str(bundle), allow_weak=True))
    queue = tmp_path_factory.mktemp("queue") / "loop.jsonl"
    archive = build_archive(ArchiveConfig(bundle=bundle, name=LOOP, version="1.0", store=live.store,
                                          review={"review": True, "review_queue": str(queue), "review_below": 1.0}))
    live.rest.register(LOOP, archive.name, initial_workers=1)
    yield champion, queue
    for version in ("1.0", "2.0"):
        try:
            live.rest.unregister(LOOP, version)
        except Exception:
            pass
    for mar in live.store.glob(f"{LOOP}-*.mar"):
        mar.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def default_version(live) -> str:
    return live.rest.describe(LOOP)[0]["modelVersion"]  # describing without a version describes the default


def test_capture_review_retrain_and_gated_promotion(live, served, tmp_path, monkeypatch):
    champion, queue = served
    texts = [f"{CORPUS[i % 8]} review {i}" for i in range(12)]
    live.rest.predict(LOOP, texts=texts)
    records = read_queue(queue)
    assert [r["text"] for r in records] == texts and all(r["version"] == "1.0" for r in records)
    feedback = tmp_path / "feedback.csv"
    review(records, ["mid", "neg", "pos"], feedback, io.StringIO("pos\n" * 12), io.StringIO())  # the reviewer's answers
    target = Target(config=live.cfg.effective_config(), state_dir=live.state_dir)

    def run_retrain(out, **kw):
        with one_torch_thread():
            return retrain.main(retrain.RetrainConfig(run=champion / "run", feedback=feedback, output_dir=out,
                                                      name=LOOP, version="2.0", max_steps=1, target=target, **kw))

    real_scores = retrain.scores

    def worse_challenger(run_dir, frame, labels):
        got = real_scores(run_dir, frame, labels)
        if str(run_dir).endswith("worse") and got.get("samples"):
            got = dict(got, macro_f1=got["macro_f1"] - 0.2)
        return got

    monkeypatch.setattr(retrain, "scores", worse_challenger)
    # The challenger is a tiny random model too: promoted past the baseline floor as the champion was exported.
    monkeypatch.setattr(training.export, "ExportConfig", functools.partial(ExportConfig, allow_weak=True))
    refused = run_retrain(tmp_path / "worse")
    assert not refused["gate"]["promote"] and "promoted" not in refused
    assert refused["outcome"].startswith("gate failed: kept the champion (test macro-F1 ")
    assert refused["outcome"].endswith("; nothing changed on the server")
    assert not (live.store / f"{LOOP}-2.0.mar").exists()
    assert [v["modelVersion"] for v in live.rest.describe(LOOP, "all")] == ["1.0"]  # nothing changed on the server
    assert default_version(live) == "1.0"

    accepted = run_retrain(tmp_path / "better", tolerance=100, max_label_drop=100)
    assert accepted["gate"]["promote"] and accepted["promoted"]["version"] == "2.0"
    assert {v["modelVersion"] for v in live.rest.describe(LOOP, "all")} == {"1.0", "2.0"}
    assert default_version(live) == "2.0"
    # A tiny random model's out-of-scope detector may reject any text: that answer is the new version's too.
    assert live.rest.predict(LOOP, "is the new version answering")["label"] in {"mid", "neg", "pos", "out_of_scope"}
    saved = json.loads((tmp_path / "better" / "report" / "comparison.json").read_text())
    archive = live.store / f"{LOOP}-2.0.mar"
    assert saved["promoted"] == {"archive": str(archive), "name": LOOP, "version": "2.0", "default": True,
                                 "previous_default": "1.0", "workers": 1}
    assert saved["outcome"] == accepted["outcome"] == (
        f"promoted: registered {LOOP} 2.0 ({archive}, 1 worker(s) READY) and made it the default version (was 1.0; "
        f"roll back with `textclf set-default --name {LOOP} --version 1.0` or `make set-default NAME={LOOP} VERSION=1.0`)")
