"""make drift against a live TorchServe: a cron series (`--since F --save-snapshot F`) starts on its first run with no
live texts (not an alert), traffic like the reference is stable, much longer texts alert (exit 1), and each check
judges only the traffic after the previous one's snapshot."""
import json

import pytest
from transformers import AutoTokenizer

from handlers import bundle as bundles
from handlers.answers import softmax
from handlers.drift_bins import PROFILE_FILE, profile_of
from handlers.runtimes import load
from textclf.pipelines import drift
from textclf.torchserve.archive import ArchiveConfig, build_archive
from textclf.torchserve.ops import Target
from training.report import predict_probs
from training.tiny import CORPUS, make_tiny_bundle

pytestmark = pytest.mark.live
DRIFTING = "drifting"


@pytest.fixture(scope="module")
def deployed(live, tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("drift") / "export", labels=("negative", "positive"))
    card = bundles.check(bundle)
    model, _ = load(card, "cpu", 1)
    texts = [f"{CORPUS[i % 8]} {i}" for i in range(300)]  # the reference traffic: short texts
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    probs = predict_probs(model, tokenizer, texts, card.max_length, 64, activation=softmax)
    profile = profile_of(probs, card.labels, tokenizer, texts, card.max_length)
    (bundle / PROFILE_FILE).write_text(json.dumps(profile.to_json()))
    archive = build_archive(ArchiveConfig(bundle=bundle, name=DRIFTING, version="1.0", store=live.store))
    live.rest.register(DRIFTING, archive.name, initial_workers=1)
    yield bundle, texts
    live.rest.unregister(DRIFTING, "1.0")
    archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def check(live, bundle, tmp_path, *args):
    out = tmp_path / "drift.json"
    config = drift.DriftConfig(reference=bundle, name=DRIFTING, out=out, target=Target(
        config=live.cfg.effective_config(), state_dir=live.state_dir), **dict(args))
    try:
        drift.main(config)
        code = 0
    except drift.DriftAlert:
        code = 1
    return code, json.loads(out.read_text())


def test_a_cron_series_starts_then_stable_then_long_texts_alert(live, deployed, tmp_path):
    bundle, texts = deployed
    snapshot = tmp_path / "logs" / "drift-snapshot.json"
    series = (("since", snapshot), ("save_snapshot", snapshot))  # the cron recipe: the same file both ways
    code, result = check(live, bundle, tmp_path, *series)  # its first run: no snapshot yet, no traffic yet
    assert (code, result["verdict"], result["features"], result["window"]) == (
        0, "no live texts", {}, "since the workers started")
    assert snapshot.is_file()
    for i in range(0, 300, 50):
        live.rest.predict(DRIFTING, texts=texts[i: i + 50])
    code, result = check(live, bundle, tmp_path, *series)
    assert (code, result["verdict"], result["live_texts"], result["versions"]) == (0, "stable", 300, ["1.0"])
    assert result["window"].startswith(f"since the snapshot {snapshot}")
    long_texts = [" ".join(CORPUS[i % 8] for _ in range(12)) for i in range(300)]
    live.rest.predict(DRIFTING, texts=long_texts)  # 300 texts: the client splits them into requests the handler takes
    code, result = check(live, bundle, tmp_path, *series)
    assert (code, result["verdict"], result["live_texts"]) == (1, "alert", 300)
    assert result["features"]["tokens"]["level"] == result["features"]["truncated"]["level"] == "alert"
