"""handlers/cache.py: the per-worker response cache, alone and inside the handler."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from handlers.cache import ENTRY_OVERHEAD, CacheCounts, NoCache, ResponseCache, cache_for
from handlers.metrics import ModelMetrics
from handlers.scoring import Scores
from tests.test_handler import LABELS, body, make_handler, run
from tests.test_metrics import FakeCache
from training.tiny import make_tiny_bundle

TEXTS = ["the film was a delight", "refund not showing up", "card", "how do I top up", "a dull, long film"]


class FakeRows:
    """An encoding whose rows are its texts' indices (handlers/long_texts.Encoded's rows_of)."""

    def __init__(self, texts):
        self.texts = list(texts)

    def rows_of(self, idx):
        return FakeRows([self.texts[i] for i in idx])


def fake_score(calls):
    """Logits that name the text (its length), and an in-scope score; records the texts each call scored."""
    def score(encoded):
        calls.append(list(encoded.texts))
        logits = torch.tensor([[float(len(t)), -float(len(t))] for t in encoded.texts])
        return Scores(logits, [len(t) / 100 for t in encoded.texts])
    return score


def test_hits_misses_evictions_and_least_recently_used_first_out():
    cache, calls = ResponseCache.sized(2, 64, 2, "max_length=8"), []
    logits, scope = cache.scores(fake_score(calls), ["aa", "bbb"], FakeRows(["aa", "bbb"]))
    assert calls == [["aa", "bbb"]] and logits.tolist() == [[2, -2], [3, -3]] and scope == [0.02, 0.03]
    cache.scores(fake_score(calls), ["aa"], FakeRows(["aa"]))  # "aa" becomes the most recently used
    cache.scores(fake_score(calls), ["c"], FakeRows(["c"]))  # evicts "bbb", the least recently used
    logits, _ = cache.scores(fake_score(calls), ["aa", "bbb", "c"], FakeRows(["aa", "bbb", "c"]))
    assert calls == [["aa", "bbb"], ["c"], ["bbb"]] and logits[:, 0].tolist() == [2, 3, 1]
    counts = cache.take_counts()
    assert (counts.hits, counts.misses, counts.evictions, counts.entries) == (3, 4, 2, 2)
    assert cache.take_counts() == CacheCounts(entries=2)  # counts restart after each report


def test_a_batch_runs_only_its_misses_and_each_repeated_text_once():
    cache, calls = ResponseCache.sized(100, 64, 2, ""), []
    cache.scores(fake_score(calls), ["a", "b"], FakeRows(["a", "b"]))
    logits, _ = cache.scores(fake_score(calls), ["a", "cc", "b", "cc", "ddd"], FakeRows(["a", "cc", "b", "cc", "ddd"]))
    assert calls == [["a", "b"], ["cc", "ddd"]] and logits[:, 0].tolist() == [1, 2, 1, 2, 3]


def test_keys_are_hashes_and_no_entry_holds_the_text():
    cache = ResponseCache.sized(10, 64, 2, "max_length=8")
    secret = "my card number is 4929 1234 5678 9012"
    cache.scores(fake_score([]), [secret], FakeRows([secret]))
    [key] = cache.entries
    assert isinstance(key, bytes) and len(key) == 16
    dump = pickle.dumps(cache.entries)
    assert secret.encode() not in dump and b"4929" not in dump


def test_what_decides_an_output_besides_the_text_is_part_of_the_key():
    a, b = ResponseCache.sized(10, 64, 2, "max_length=8"), ResponseCache.sized(10, 64, 2, "max_length=16")
    assert a.key("same text") != b.key("same text") and a.key("same text") == a.key("same text")
    assert a.key("same text") != a.key("same text ")  # the exact text, not a normalised one


def test_size_and_memory_bound_the_entries():
    assert ResponseCache.sized(1_000_000, 1.0, 77, "").capacity == int(1e6 // (ENTRY_OVERHEAD + 4 * 77))
    assert ResponseCache.sized(100, 64, 77, "").capacity == 100
    assert isinstance(cache_for(0, 64, 2, ""), NoCache) and cache_for(0, 64, 2, "").take_counts() == CacheCounts()


def test_cache_metrics_are_recorded_per_batch():
    fake = FakeCache()
    ModelMetrics(fake, "m", "1").record([("a", 0.9)], [], 1, [], 0, CacheCounts(hits=3, misses=2, evictions=1,
                                                                                entries=7))
    got = {name: c.updates for name, c in fake.counters.items() if name.startswith("Cache")}
    assert got == {"CacheHits": [((), 3)], "CacheMisses": [((), 2)], "CacheEvictions": [((), 1)],
                   "CacheEntries": [((), 7)]}


# --- inside the handler ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return {"fp32": make_tiny_bundle(root / "fp32", labels=LABELS),
            "onnx": make_tiny_bundle(root / "onnx", labels=LABELS, runtime="onnxruntime"),
            "scope": make_tiny_bundle(root / "scope", labels=LABELS, detector="mahalanobis"),
            "multi": make_tiny_bundle(root / "multi", labels=LABELS, thresholds=[0.5, 0.4, 0.6])}


ROWS = [body({"texts": TEXTS[:3], "top_k": 1}), body(TEXTS[3]), body({"instances": TEXTS}),
        body({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[3:]}]})]


@pytest.mark.parametrize("kind", ["fp32", "onnx", "scope", "multi"])
def test_answers_from_the_cache_equal_recomputed_answers_for_every_request_shape(bundles, kind, monkeypatch):
    cached, uncached = make_handler(bundles[kind]), make_handler(bundles[kind], {"cache_size": 0})
    first = run(cached, ROWS)
    monkeypatch.setattr(cached.scorer, "forward", None)  # every text must now come from the cache
    again = run(cached, list(reversed(ROWS)))[::-1]  # in other batches, with other neighbours
    assert first == again == run(uncached, ROWS)


def test_one_forward_pass_for_the_misses_only(bundles, monkeypatch):
    handler = make_handler(bundles["fp32"])
    run(handler, [body({"texts": TEXTS[:2]})])
    rows, forward = [], handler.scorer.forward
    monkeypatch.setattr(handler.scorer, "forward", lambda ids, mask: rows.append(ids.shape[0]) or forward(ids, mask))
    run(handler, [body({"texts": TEXTS[:2]}), body({"texts": TEXTS[2:4]})])
    run(handler, [body({"texts": TEXTS[:4]})])
    assert rows == [2]  # one pass for the two new texts, none for a batch wholly in the cache


def test_each_version_has_its_own_cache(bundles, tmp_path):
    old, new = make_handler(bundles["fp32"]), make_handler(make_tiny_bundle(tmp_path / "v2", labels=LABELS, arch="distilbert"))
    text = [body("the film was a delight")]
    assert run(old, text) == run(old, text)
    assert run(new, text) != run(old, text)  # the new model's answer, never the old one's cached output
    assert old.cache is not new.cache


def test_cache_size_zero_hashes_nothing(bundles):
    handler = make_handler(bundles["fp32"], {"cache_size": 0})
    run(handler, [body(TEXTS[0]), body(TEXTS[0])])
    assert isinstance(handler.cache, NoCache)


def test_the_cached_output_is_before_top_k_and_thresholds(bundles):
    handler = make_handler(bundles["fp32"])
    [(_, _, all_scores)] = run(handler, [body({"text": TEXTS[0]})])
    [(_, _, one)] = run(handler, [body({"text": TEXTS[0], "top_k": 1})])
    assert one["label"] == all_scores["label"] and len(one["scores"]) == 1 and len(all_scores["scores"]) == 3
    assert json.dumps(one["score"]) == json.dumps(all_scores["score"])
    assert np.isclose(sum(all_scores["scores"].values()), 1.0)
