"""make drift against a live TorchServe: traffic like the reference is stable, much longer texts alert (exit 1),
and a snapshot limits the judgement to the traffic after it."""
import json

import pytest

from training.tiny import CORPUS, make_tiny_bundle

pytestmark = pytest.mark.live
DRIFTING = "drifting"


@pytest.fixture(scope="module")
def deployed(live, tmp_path_factory):
    from transformers import AutoTokenizer

    from handlers.answers import softmax
    from handlers.profile import PROFILE_FILE, profile_of
    from training.report import predict_probs
    from handlers.runtimes import load
    from handlers import bundle as bundles
    from tsclient.archive import ArchiveConfig, build_archive

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
    from tsclient import drift
    from tsclient.ops import Target

    out = tmp_path / "drift.json"
    config = drift.DriftConfig(reference=bundle, name=DRIFTING, out=out, target=Target(
        config=live.cfg.effective_config(), state_dir=live.state_dir), **dict(args))
    try:
        drift.main(config)
        code = 0
    except drift.DriftAlert:
        code = 1
    return code, json.loads(out.read_text())


def test_like_the_reference_is_stable_and_long_texts_alert(live, deployed, tmp_path):
    bundle, texts = deployed
    code, result = check(live, bundle, tmp_path)
    assert (code, result["verdict"]) == (0, "too little traffic")
    for i in range(0, 300, 50):
        live.rest.predict(DRIFTING, texts=texts[i: i + 50])
    snapshot = tmp_path / "snapshot.json"
    code, result = check(live, bundle, tmp_path, ("save_snapshot", snapshot))
    assert (code, result["verdict"], result["live_texts"]) == (0, "stable", 300)
    long_texts = [" ".join(CORPUS[i % 8] for _ in range(12)) for i in range(300)]
    for i in range(0, 300, 50):
        live.rest.predict(DRIFTING, texts=long_texts[i: i + 50])
    code, result = check(live, bundle, tmp_path, ("since", snapshot))
    assert (code, result["verdict"], result["live_texts"]) == (1, "alert", 300)
    assert result["features"]["tokens"]["level"] == result["features"]["truncated"]["level"] == "alert"
