"""Out-of-scope detection served: a bundle with a detector answers a far-away text `out_of_scope` over REST, KServe
v1 and gRPC, single- and multi-label, on TorchScript and ONNX Runtime, and counts it on /metrics."""
import pytest

from tests.live.test_metrics import counter, scrape_model
from tests.test_out_of_scope import FAR, IN_SCOPE, LABELS
from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
CASES = {  # model name: (runtime, multi-label thresholds)
    "scoped": ("torchscript", None),
    "scoped-onnx": ("onnxruntime", None),
    "scoped-tags": ("torchscript", [0.01, 0.99, 0.01]),
}


@pytest.fixture(scope="module")
def scoped(live, tmp_path_factory):
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    archives = []
    for name, (runtime, thresholds) in CASES.items():
        bundle = make_tiny_bundle(tmp_path_factory.mktemp(name) / "export", labels=LABELS, runtime=runtime,
                                  thresholds=thresholds, detector="mahalanobis")
        archives.append(build_archive(ArchiveConfig(bundle=bundle, name=name, version="1.0", store=live.store)))
        live.rest.register(name, archives[-1].name, initial_workers=1)
    yield
    for name, archive in zip(CASES, archives, strict=True):
        live.rest.unregister(name, "1.0")
        archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


@pytest.mark.parametrize("name", CASES)
def test_far_texts_are_answered_out_of_scope_and_counted(live, scoped, name):
    near, far = live.rest.predict(name, texts=[IN_SCOPE, FAR])
    assert near["out_of_scope"] is False and near["in_scope"] > 0
    assert far["out_of_scope"] is True and far["label"] == "out_of_scope" and far["in_scope"] == 0
    if CASES[name][1] is not None:
        assert far["labels"] == [] and near["labels"]
    assert live.rest.predict(name, instances=[FAR])["predictions"][0]["out_of_scope"] is True
    assert live.grpc.predict(name, FAR)["label"] == "out_of_scope"
    series = scrape_model(live, name)
    assert counter(series, "OutOfScopeTexts", model=name, version="1.0") == 3
    assert counter(series, "PredictionsPerLabel", model=name, version="1.0", Label="out_of_scope") == 3
