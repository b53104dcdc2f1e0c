"""Pipelines that span training and serving: the demo, the feedback loop (review, retrain, gate, promote), drift."""
