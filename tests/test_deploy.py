"""deploy/: the Grafana dashboard is valid JSON whose queries name only metrics that exist (the handler's own,
declared in metrics.yaml, or TorchServe's), and Prometheus scrapes the configured metrics port."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from handlers.metrics import GAUGES, METRICS
from textclf.torchserve.properties import read_properties

ROOT = Path(__file__).resolve().parents[1]
PROMQL_WORDS = {"sum", "by", "rate", "increase", "label_values", "ModelName", "ModelVersion", "model_name",
                "Label", "Bucket", "Reason"}


def test_dashboard_queries_name_emitted_metrics():
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    torchserve = {m["name"] for section in yaml.safe_load((ROOT / "metrics.yaml").read_text())["ts_metrics"].values()
                  for m in section}
    used = set()
    for expr in exprs:
        expr = re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)  # label values and range durations
        used |= {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr) if w not in PROMQL_WORDS and not w[0].isdigit()}
    ours = set(METRICS) | set(GAUGES)
    assert used and used <= ours | torchserve, used - ours - torchserve
    assert {"TextsAnswered", "RejectedRequests", "PredictionsPerLabel", "ConfidenceBucket", "CacheHits", "CacheEntries"} <= used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_prometheus_scrapes_the_metrics_port_of_config_properties():
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    metrics_address = read_properties(ROOT / "config.properties")["metrics_address"]
    assert scrape["static_configs"][0]["targets"] == [metrics_address.split("//", 1)[1]]
