"""The response cache, explanations and the Open Inference Protocol on a real TorchServe: /explanations and v2 bodies
over REST, every answer checked against docs/openapi.yaml, and the cache's counters on the metrics port."""
from __future__ import annotations

import json

import pytest

from tests.live.test_metrics import counter, scrape_model
from tests.test_openapi import check_answer
from textclf.torchserve.errors import TorchServeError
from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
NAME = "features"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["the film was a delight", "why was my payment declined at the shop"]


@pytest.fixture(scope="module")
def served(live, tmp_path_factory):
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    bundle = make_tiny_bundle(tmp_path_factory.mktemp(NAME) / "export", labels=LABELS, detector="mahalanobis")
    archive = build_archive(ArchiveConfig(bundle=bundle, name=NAME, version="1.0", store=live.store,
                                          handler={"explain_max_words": 10}))
    live.rest.register(NAME, archive.name, initial_workers=1)
    yield
    live.rest.unregister(NAME, "1.0")
    archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def test_explanations_over_rest_match_the_schema(live, served):
    one = live.rest.explain(NAME, TEXTS[0])
    check_answer(one, 200, explain=True)
    assert [a["text"] for a in one["attributions"]] == TEXTS[0].split()
    named = live.rest.explain(NAME, texts=TEXTS, label="neutral", version="1.0")
    check_answer(named, 200, explain=True)
    assert [e["label"] for e in named] == ["neutral", "neutral"]
    with pytest.raises(TorchServeError) as refused:
        live.rest.explain(NAME, " ".join(["word"] * 11))
    assert (refused.value.status, refused.value.kind) == (413, "too_many_words")


def test_v2_bodies_over_rest_match_the_schema_and_the_json_answers(live, served):
    body = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
    got = live.rest.post_prediction(NAME, json.dumps(body).encode(), "application/json")
    check_answer(got, 200)
    plain = live.rest.predict(NAME, texts=TEXTS)
    outputs = {o["name"]: o["data"] for o in got["outputs"]}
    assert (got["model_name"], got["model_version"], got["id"]) == (NAME, "1.0", "r1")
    assert outputs["label"] == [p["label"] for p in plain] and outputs["out_of_scope"] == [p["out_of_scope"] for p in plain]
    for answer in (plain, live.rest.predict(NAME, TEXTS[0]), live.rest.predict(NAME, instances=TEXTS)):
        check_answer(answer, 200)
    bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["a"]}]}
    with pytest.raises(TorchServeError) as refused:
        live.rest.post_prediction(NAME, json.dumps(bad).encode(), "application/json")
    assert (refused.value.status, refused.value.kind) == (400, "invalid_request") and "BYTES" in refused.value.message


def test_the_cache_counts_hits_misses_and_entries_on_the_metrics_port(live, served):
    before = scrape_model(live, NAME)
    text = "a text sent three times to the same worker"
    answers = [live.rest.predict(NAME, text) for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    series = scrape_model(live, NAME)
    gained = {name: counter(series, name, model=NAME, version="1.0") - counter(before, name, model=NAME, version="1.0")
              for name in ("CacheHits", "CacheMisses")}
    assert gained == {"CacheHits": 2, "CacheMisses": 1}
    assert counter(series, "CacheEntries", model=NAME, version="1.0") >= 1
