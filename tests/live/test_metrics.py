"""The classifier's own metrics on TorchServe's Prometheus endpoint: after known traffic to a model of its own,
the counters say exactly what was sent."""
import pytest
import requests

from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
WATCHED = "watched"
LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def watched(live, tmp_path_factory):
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("watched") / "export", labels=LABELS)
    archive = build_archive(ArchiveConfig(bundle=bundle, name=WATCHED, version="3.1", store=live.store))
    live.rest.register(WATCHED, archive.name, initial_workers=1)
    yield
    live.rest.unregister(WATCHED, "3.1")
    archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def scrape(live) -> dict:
    """{(metric, frozenset of label pairs): value} for the watched model's series on /metrics."""
    return scrape_model(live, WATCHED)


def scrape_model(live, name: str) -> dict:
    from textclf.pipelines.drift import series

    text = requests.get(f"{live.endpoints.metrics_url}/metrics", timeout=10).text
    return {(metric, frozenset((k, v) for k, v in labels.items() if k not in ("Hostname", "Level"))): value
            for metric, labels, value in series(text) if labels.get("ModelName") == name}


def counter(series: dict, name: str, model: str = WATCHED, version: str = "3.1", **dims) -> float:
    want = {("ModelName", model), ("ModelVersion", version), *dims.items()}
    return sum(v for (metric, labels), v in series.items() if metric == name and set(labels) == want)


def test_counters_match_the_traffic_sent(live, watched):
    from textclf.torchserve.errors import TorchServeError

    answers = [live.rest.predict(WATCHED, "the film was a delight")]
    answers += live.rest.predict(WATCHED, texts=["why", "a dull, lifeless script and wooden acting " * 10])
    for bad in (b'{"texts": []}', b'{"texts": 5}'):
        with pytest.raises(TorchServeError):
            live.rest.post_prediction(WATCHED, bad, "application/json")
    series = scrape(live)
    by_label = {name: sum(a["label"] == name for a in answers) for name in LABELS}
    for name, n in by_label.items():
        assert counter(series, "PredictionsPerLabel", Label=name) == n
    assert counter(series, "TextsAnswered") == 3 and counter(series, "RequestsAnswered") == 2
    assert counter(series, "TruncatedTexts") == 1  # the long text was cut at max_length
    assert sum(v for (m, _), v in series.items() if m == "ConfidenceBucket") == 3
    assert sum(v for (m, _), v in series.items() if m == "TokensBucket") == 3
    assert counter(series, "RejectedRequests", Reason="invalid_request") == 2
