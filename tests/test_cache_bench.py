"""bench/cache_bench.py's pure parts: the traffic, the hit-rate simulation, the comparison of answers and the
report (the served passes need TorchServe and banking77: `make bench-cache`)."""
from __future__ import annotations

import pytest

from bench.cache_bench import compare, markdown, repeated_share, simulated_hit_rate, targets, traffic

TEXTS = [f"text {i}" for i in range(5000)]


def test_traffic_repeats_about_the_share_asked_for_and_is_seeded():
    sent = traffic(TEXTS, 2000, 300, 0.6, 1.1, seed=13)
    assert sent == traffic(TEXTS, 2000, 300, 0.6, 1.1, seed=13) and sent != traffic(TEXTS, 2000, 300, 0.6, 1.1, 14)
    assert 0.45 < repeated_share(sent) < 0.55
    assert repeated_share(traffic(TEXTS, 2000, 300, 0.0, 1.1, 13)) == 0
    hot = [t for t in sent if t in TEXTS[:300]]
    assert hot.count(TEXTS[0]) > hot.count(TEXTS[299]) * 5  # Zipf: the first text is far more frequent


def test_a_shared_cache_hits_at_least_as_often_as_per_worker_caches():
    sent = traffic(TEXTS, 2000, 300, 0.6, 1.1, seed=13)
    one = simulated_hit_rate(sent, 1, 10_000, shared=False)
    assert one == pytest.approx(repeated_share(sent))  # one unbounded worker hits every repeat
    assert simulated_hit_rate(sent, 1, 10_000, shared=True) == one
    assert simulated_hit_rate(sent, 8, 10_000, shared=False) < one
    assert simulated_hit_rate(sent, 1, 10, shared=False) < one  # a small cache evicts


def answer(label, **scores):
    return {"label": label, "score": max(scores.values()), "scores": scores}


def test_compare_calls_answers_identical_only_within_fp32_rounding_and_with_the_same_labels():
    a = [answer("x", x=0.9, y=0.1)]
    assert compare(a, [answer("x", x=0.9 + 1e-6, y=0.1)])["identical"]
    assert not compare(a, [answer("x", x=0.9 + 1e-4, y=0.1)])["identical"]
    assert compare(a, [answer("y", x=0.9, y=0.1)])["labels_differ"] == 1


def test_targets_and_report_from_results():
    served = {"repeats": {"speedup": 1.7, "answers": {"identical": True, "labels_differ": 0, "max_score_diff": 0.0}},
              "no_repeats": {"speedup": 0.96, "answers": {"identical": True, "labels_differ": 0, "max_score_diff": 0}}}
    for row in served.values():
        row["recomputed"] = {"identical": True, "labels_differ": 0, "max_score_diff": 1e-6}
        row["on"] = {"texts_per_s": 300.0, "p50_ms": 90.0, "hit_rate": 0.4}
        row["off"] = {"texts_per_s": 200.0, "p50_ms": 120.0, "hit_rate": None}
    got = targets({"served": {"default": served}})
    assert [t["met"] for t in got] == [True, False]  # 4% slower without repeats misses the 3% target
    results = {"config": {"passes": 5}, "cpu_class": "amx", "cores": 2, "torch": "2.13", "command": "python -m bench.cache_bench",
               "served": {"default": served}, "targets": got,
               "workloads": {"repeats": {"repeated_share": 0.5}, "no_repeats": {"repeated_share": 0.0}},
               "batch_dependence": {"bf16": {"variant": "bf16", "runtime": "torchscript", "max_prob_diff": 0.01,
                                            "mean_prob_diff": 0.001, "labels_differ": 1, "texts": 512}},
               "shared_cache": {"requests": 1000, "served_ms_per_text_per_core": 5.0, "loopback_round_trip_ms": 0.05,
                                "rows": [{"traffic": "long tail", "workers": 2, "per_worker_hit_rate": 0.4,
                                          "shared_hit_rate": 0.45, "saved_ms_per_text": 0.15, "saved_share": 0.03}]}}
    text = markdown(results)
    assert ("| default | repeats | 50% | on | 300 | 90.0 | 40% | 1.70x | identical (max score diff 0.0e+00; off vs off "
            "1.0e-06) |") in text
    assert "| default deployment, no repeats: within 3% of cache off | 0.960x (-4.0%) | no |" in text
    assert "| bf16 | torchscript |" in text and "| long tail | 2 | 40.0% | 45.0% | +0.150 ms (+3.0%) |" in text
