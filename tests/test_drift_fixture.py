"""The drift check on a real model's distribution, with a fixture this test writes itself (no ../shared/data, no
TorchServe): a tiny model's reference profile made as export makes it (handlers.drift_bins.profile_of over its
"test" texts), against counters recorded by the real handler answering traffic in-process (handlers/metrics.py)
and read by `textclf.pipelines.drift` over HTTP in TorchServe's Prometheus text format. Traffic like the reference
is stable (no alert), traffic with a known shift alerts (DriftAlert, exit 1) on the features that shifted.
The same check against a live TorchServe: tests/live/test_drift.py."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handlers.drift_bins import PROFILE_FILE
from handlers.metrics import ModelMetrics
from tests.test_handler import body, run
from textclf.pipelines import drift
from textclf.torchserve.ops import Target
from training.tiny import CORPUS, make_tiny_bundle

NAME, VERSION = "drifting", "1.0"
LABELS = ("negative", "positive")


def short_texts(start: int, n: int = 300) -> list[str]:
    """Texts like the reference's: a sentence of the tiny corpus and a number (of as many digits: numbers of
    more digits are more tokens, a shift of their own)."""
    return [f"{CORPUS[i % 8]} {i}" for i in range(start, start + n)]


class Counters:
    """A worker's metrics cache, as much of TorchServe's as ModelMetrics uses: it keeps each counter's totals and
    writes them out the way TorchServe's /metrics endpoint does."""

    def __init__(self):
        self.totals: dict[tuple, float] = {}
        self.lock = threading.Lock()

    def add_time(self, *args, **kwargs) -> None:  # HandlerTime, which BaseHandler.handle records
        pass

    def add_metric_to_cache(self, name, unit, dimensions, kind):
        counters = self

        class Counter:
            def add_or_update(self, value, dimension_values):
                key = (name, tuple(zip(dimensions, dimension_values, strict=True)))
                with counters.lock:
                    counters.totals[key] = counters.totals.get(key, 0) + value

        return Counter()

    def prometheus(self) -> str:
        lines = []
        with self.lock:
            for name in sorted({name for name, _ in self.totals}):
                lines += [f"# HELP {name} Torchserve prometheus counter metric with unit: Count", f"# TYPE {name} counter"]
                for (metric, dims), value in sorted(self.totals.items()):
                    if metric == name:
                        labels = "".join(f'{k}="{v}",' for k, v in dims)
                        lines.append(f"{name}{{{labels}Hostname=\"test-host\",}} {float(value)}")
        return "\n".join(lines) + "\n"


@pytest.fixture
def metrics_endpoint(tmp_path):
    """An HTTP server answering GET /metrics with the counters' Prometheus text, and a Target whose
    config.properties points metrics_address at it."""
    counters = Counters()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path != "/metrics":
                self.send_error(404)
                return
            data = counters.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "config.properties"
    config.write_text(f"metrics_address=http://127.0.0.1:{httpd.server_port}\n")
    try:
        yield counters, Target(config=config, state_dir=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny bundle with the reference profile export would write: its "test" texts as the model answers them."""
    from transformers import AutoTokenizer

    from handlers import bundle as bundles
    from handlers.answers import softmax
    from handlers.drift_bins import profile_of
    from handlers.runtimes import load
    from training.report import predict_probs

    out = make_tiny_bundle(tmp_path_factory.mktemp("drift") / "export", labels=LABELS)
    card = bundles.check(out)
    model, _ = load(card, "cpu", 1)
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = short_texts(0)
    probs = predict_probs(model, tokenizer, texts, card.max_length, 64, activation=softmax)
    (out / PROFILE_FILE).write_text(json.dumps(profile_of(probs, card.labels, tokenizer, texts, card.max_length).to_json()))
    return out


def serving_handler(bundle, counters):
    """The handler as a TorchServe worker initialises it, its metrics going to `counters`."""
    from ts.context import Context

    from handlers.text_classifier import TextClassifierHandler

    manifest = {"model": {"modelName": NAME, "modelVersion": VERSION, "serializedFile": "model.pt",
                          "handler": "text_classifier.py"}}
    handler = TextClassifierHandler()
    handler.initialize(Context(NAME, str(bundle), manifest, 16, None, "0.12.0", metrics=counters,
                               model_yaml_config={"handler": {}}))
    return handler


def send(handler, texts: list[str]) -> None:
    for i in range(0, len(texts), 50):
        assert [status for status, _, _ in run(handler, [body({"texts": texts[i: i + 50]})])] == [200]


def check(target, bundle, tmp_path, **options) -> tuple[int, dict]:
    """`textclf drift` for the model: (exit code, the result it wrote)."""
    out = tmp_path / "drift.json"
    try:
        drift.main(drift.DriftConfig(reference=bundle, name=NAME, version=VERSION, out=out, target=target, **options))
        code = 0
    except drift.DriftAlert:
        code = 1
    return code, json.loads(out.read_text())


def alerts(result: dict) -> set[str]:
    return {name for name, feature in result["features"].items() if feature["level"] == "alert"}


def test_traffic_like_the_reference_is_stable_and_much_longer_texts_alert(bundle, metrics_endpoint, tmp_path):
    counters, target = metrics_endpoint
    handler = serving_handler(bundle, counters)
    code, result = check(target, bundle, tmp_path)
    assert (code, result["live_texts"]) == (0, 0) and result["verdict"] not in ("stable", "watch", "alert")  # not judged

    send(handler, short_texts(300))  # 300 texts the reference does not hold, drawn the way its texts were
    snapshot = tmp_path / "snapshot.json"
    code, result = check(target, bundle, tmp_path, save_snapshot=snapshot)
    assert (code, result["verdict"], result["live_texts"], result["reference_texts"]) == (0, "stable", 300, 300), result
    assert alerts(result) == set()

    long_texts = [" ".join(CORPUS[(i + j) % 8] for j in range(12)) for i in range(300)]  # far past max_length
    send(handler, long_texts)
    code, result = check(target, bundle, tmp_path, since=snapshot)  # judged on the long texts alone
    assert (code, result["verdict"], result["live_texts"]) == (1, "alert", 300), result
    assert {"tokens", "truncated"} <= alerts(result) and "label" not in alerts(result)
    assert result["features"]["tokens"]["chi2_p"] < 1e-6


def test_a_model_answering_one_label_only_alerts_on_the_label(bundle, metrics_endpoint, tmp_path):
    """Counts with a known shift, through the worker's own counters: the texts are like the reference's in
    length and confidence, but every answer is the label the model gave least often on the reference."""
    counters, target = metrics_endpoint
    reference = json.loads((bundle / PROFILE_FILE).read_text())
    rare = min(LABELS, key=lambda label: reference["labels"].get(label, 0))  # the random model's rarer answer

    def spread(buckets: dict, kind):  # a value per text, as many in each bucket as the reference has there
        return [kind(name[3:]) for name, n in sorted(buckets.items()) for _ in range(n)]  # "le_0.6": up to 0.6

    confidence, tokens = spread(reference["confidence"], float), spread(reference["tokens"], int)
    assert len(confidence) == len(tokens) == 300 and reference["truncated"] == reference["unknown_tokens"] == 0
    metrics = ModelMetrics(counters, NAME, VERSION)
    for i in range(0, 300, 50):  # six batches of 50 texts, every one answered `rare`
        metrics.record([(rare, c) for c in confidence[i: i + 50]], [(t, False, 0) for t in tokens[i: i + 50]],
                       answered=1, rejected=[])
    code, result = check(target, bundle, tmp_path)
    assert (code, result["verdict"], result["live_texts"]) == (1, "alert", 300), result
    assert alerts(result) == {"label"} and result["features"]["label"]["chi2_p"] < 1e-6
