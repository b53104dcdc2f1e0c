"""Drift statistics between two binned profiles (handlers/drift_bins.py): population stability index per feature and
a chi-square test of homogeneity. Pure functions over counts, so they are tested without a server.

PSI = sum over buckets of (live% - ref%) * ln(live% / ref%), with empty buckets smoothed to a small share.
The usual reading, used here: below 0.1 stable, 0.1-0.25 watch, above 0.25 alert. A window without live texts
is not compared at all: every live share would be the smoothing constant, and PSI would read as an alert.
"""
from __future__ import annotations

import math

from handlers.drift_bins import safe  # label names as the worker's counters carry them

STABLE, WATCH = 0.1, 0.25
SMOOTHING = 1e-4  # share given to an empty bucket, so one empty side does not make PSI infinite
MIN_TEXTS = 200  # below this many live texts, PSI swings with sampling noise alone: too little traffic to judge
NO_TEXTS, TOO_LITTLE = "no live texts", "too little traffic"  # verdicts that judge nothing (never an alert)


def psi(reference: dict, live: dict) -> float:
    keys = sorted(set(reference) | set(live))
    ref_total, live_total = sum(reference.values()) or 1, sum(live.values()) or 1
    out = 0.0
    for key in keys:
        r = max(reference.get(key, 0) / ref_total, SMOOTHING)
        a = max(live.get(key, 0) / live_total, SMOOTHING)
        out += (a - r) * math.log(a / r)
    return out


def chi_square_p(reference: dict, live: dict) -> float:
    """p-value that both samples come from one distribution over these buckets (1.0 when untestable)."""
    from scipy.stats import chi2_contingency  # lazy: scipy.stats takes ~0.7 s, which `textclf drift --help` need not wait

    keys = [k for k in sorted(set(reference) | set(live)) if reference.get(k, 0) + live.get(k, 0) > 0]
    if len(keys) < 2 or not sum(reference.values()) or not sum(live.values()):
        return 1.0
    return float(chi2_contingency([[reference.get(k, 0) for k in keys], [live.get(k, 0) for k in keys]])[1])


def level(value: float) -> str:
    return "stable" if value < STABLE else "watch" if value <= WATCH else "alert"


def features(profile: dict) -> dict[str, dict]:
    """The distributions compared, from a profile's counts: the two rates become two-bucket distributions."""
    labels = {}
    for name, n in profile["labels"].items():
        labels[safe(name)] = labels.get(safe(name), 0) + n
    out = {"label": labels, "confidence": profile["confidence"], "tokens": profile["tokens"],
           "truncated": {"cut": profile["truncated"], "whole": profile["texts"] - profile["truncated"]},
           "unknown_tokens": {"unknown": profile["unknown_tokens"],
                              "known": profile["token_total"] - profile["unknown_tokens"]}}
    if profile.get("out_of_scope") is not None:  # bundles with a detector: a rising out-of-scope share is drift too
        out["out_of_scope"] = {"out": profile["out_of_scope"], "in": profile["texts"] - profile["out_of_scope"]}
    return out


def compare(reference: dict, live: dict) -> dict:
    """Per feature: PSI, its level and the chi-square p-value; overall: the worst level, `too little traffic`, or
    `no live texts` (then no feature is compared)."""
    summary = {"live_texts": live["texts"], "reference_texts": reference["texts"], "min_texts": MIN_TEXTS,
               "thresholds": {"stable_below": STABLE, "alert_above": WATCH}}
    if not live["texts"]:
        return {"verdict": NO_TEXTS, **summary, "features": {}}
    rows, live_features = {}, features(live)
    for name, ref in features(reference).items():
        got = live_features[name]
        value = psi(ref, got)
        rows[name] = {"psi": round(value, 4), "level": level(value), "chi2_p": round(chi_square_p(ref, got), 6)}
    if live["texts"] < MIN_TEXTS:
        verdict = TOO_LITTLE
    else:
        verdict = max((r["level"] for r in rows.values()), key=["stable", "watch", "alert"].index)
    return {"verdict": verdict, **summary, "features": rows}
