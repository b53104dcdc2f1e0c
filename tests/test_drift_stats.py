"""Drift statistics (textclf/pipelines/drift_stats.py) and the binning they share with the worker (handlers/drift_bins.py)."""
from __future__ import annotations

import math

import pytest
import torch

from handlers.drift_bins import CONFIDENCE_EDGES, TOKEN_EDGES, Profile, bucket, bucket_names, text_features
from textclf.pipelines import drift_stats


def test_buckets_are_named_by_their_inclusive_upper_bound():
    assert bucket(0.3, CONFIDENCE_EDGES) == "le_0.3" and bucket(0.31, CONFIDENCE_EDGES) == "le_0.4"
    assert bucket(0.0, CONFIDENCE_EDGES) == "le_0.3" and bucket(1.0, CONFIDENCE_EDGES) == "le_1"
    assert bucket(600, TOKEN_EDGES) == "le_inf" and bucket(8, TOKEN_EDGES) == "le_8"
    assert bucket_names(TOKEN_EDGES)[-1] == "le_inf" and len(bucket_names(CONFIDENCE_EDGES)) == len(CONFIDENCE_EDGES)


def test_text_features_count_real_tokens_cut_texts_and_unknown_tokens():
    ids = torch.tensor([[5, 3, 3, 0], [5, 6, 7, 8]])  # 3 is the unknown token, 0 padding
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert text_features(ids, mask, 4, unk_id=3) == [(3, False, 2), (4, True, 0)]
    assert text_features(ids, mask, 8, unk_id=None) == [(3, False, 0), (4, False, 0)]


def profile(n: int, label: str = "a", confidence: float = 0.97, tokens: int = 20, cut: bool = False) -> dict:
    p = Profile()
    for _ in range(n):
        p.add(label, confidence, tokens, cut, 0)
    return p.to_json()


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    assert drift_stats.psi({"x": 10, "y": 30}, {"x": 100, "y": 300}) == pytest.approx(0.0)
    small = drift_stats.psi({"x": 50, "y": 50}, {"x": 55, "y": 45})
    large = drift_stats.psi({"x": 50, "y": 50}, {"x": 90, "y": 10})
    assert 0 < small < drift_stats.STABLE < drift_stats.WATCH < large
    # By hand: (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    assert large == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2))


def test_same_traffic_is_stable_and_shifted_traffic_alerts():
    reference = profile(500)
    same = drift_stats.compare(reference, profile(300))
    assert same["verdict"] == "stable" and all(f["level"] == "stable" for f in same["features"].values())
    shifted = drift_stats.compare(reference, profile(300, confidence=0.45, tokens=120))
    assert shifted["verdict"] == "alert"
    assert {n for n, f in shifted["features"].items() if f["level"] == "alert"} == {"confidence", "tokens"}
    assert shifted["features"]["confidence"]["chi2_p"] < 1e-6


def test_a_rising_out_of_scope_share_is_drift_when_the_bundle_has_a_detector():
    reference = {**profile(500), "out_of_scope": 25}  # 5% of the test split answered out of scope
    calm = drift_stats.compare(reference, {**profile(400), "out_of_scope": 20})
    assert calm["features"]["out_of_scope"]["level"] == "stable"
    rising = drift_stats.compare(reference, {**profile(400), "out_of_scope": 160})
    assert rising["features"]["out_of_scope"]["level"] == "alert" and rising["verdict"] == "alert"
    # A reference without a detector has no such feature, whatever the live counters say.
    assert "out_of_scope" not in drift_stats.compare(profile(500), {**profile(400), "out_of_scope": 0})["features"]


def test_too_little_traffic_is_said_not_judged():
    out = drift_stats.compare(profile(500), profile(drift_stats.MIN_TEXTS - 1, confidence=0.45))
    assert out["verdict"] == "too little traffic" and out["features"]["confidence"]["level"] == "alert"


def test_an_rt_polarity_model_is_stable_on_movie_reviews_and_alerts_on_banking_questions(shared_data, tmp_path):
    """A MiniLM briefly fine-tuned on rt-polarity: half of rt-polarity's test split against the other half is
    stable, banking77 questions against it alert on the confidence and the length of the texts."""
    import json

    import pandas as pd

    from handlers.drift_bins import profile_of
    from training.problems import SingleLabel, rescale
    from training.train import TrainConfig, eager_probs, main

    rt = pd.read_csv(shared_data / "rt-polarity" / "train.csv").sample(frac=1.0, random_state=0)
    data = tmp_path / "data"
    data.mkdir()
    rt.iloc[:800].to_csv(data / "train.csv", index=False)
    rt.iloc[800:900].to_csv(data / "validation.csv", index=False)
    rt.iloc[900:950].to_csv(data / "test.csv", index=False)
    run = tmp_path / "run"
    main(TrainConfig(output_dir=str(run), data=str(data), max_steps=60, batch_size=16, max_length=64,
                     early_stopping_patience=0, progress=False))
    meta = json.loads((run / "run.json").read_text())

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")

    def profile(texts: list[str]) -> dict:
        probs = rescale(eager_probs(model, tokenizer, texts, 64, 64, SingleLabel()), meta["temperature"] or 1.0)
        return profile_of(probs, meta["labels"], tokenizer, texts, 64).to_json()

    movies = pd.read_csv(shared_data / "rt-polarity" / "test.csv")["text"].tolist()
    banking = pd.read_csv(shared_data / "banking77" / "test.csv")["text"].sample(500, random_state=0).tolist()
    reference = profile(movies[:500])
    same = drift_stats.compare(reference, profile(movies[500:1000]))
    assert same["verdict"] == "stable", same
    other = drift_stats.compare(reference, profile(banking))
    assert other["verdict"] == "alert"
    assert other["features"]["confidence"]["level"] == other["features"]["tokens"]["level"] == "alert", other
