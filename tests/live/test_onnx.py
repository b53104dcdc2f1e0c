"""An ONNX Runtime archive served next to the session's TorchScript one: the same answers over REST and gRPC
as the TorchScript archive of the same tiny model, and the same per-request errors."""
import pytest

from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
ONNX, SCRIPTED = "onnx-clf", "scripted-clf"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["the film was a delight", "why was my payment declined at the shop"]


@pytest.fixture(scope="module")
def pair(live, tmp_path_factory):
    """One tiny model archived twice: as model.onnx and as model.pt (tiny bundles are seeded, so identical)."""
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    root, archives = tmp_path_factory.mktemp("onnx"), []
    for name, runtime in ((ONNX, "onnxruntime"), (SCRIPTED, "torchscript")):
        bundle = make_tiny_bundle(root / name, labels=LABELS, runtime=runtime)
        archive = build_archive(ArchiveConfig(bundle=bundle, name=name, version="1.0", store=live.store))
        live.rest.register(name, archive.name, initial_workers=1)
        archives.append(archive)
    yield
    for name, archive in zip((ONNX, SCRIPTED), archives, strict=False):
        live.rest.unregister(name, "1.0")
        archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def assert_same(a: dict, b: dict) -> None:
    assert a["label"] == b["label"] and list(a["scores"]) == list(b["scores"])
    assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=1e-4)


def test_onnx_archive_answers_as_the_torchscript_one_over_rest_and_grpc(live, pair):
    for got, want in zip(live.rest.predict(ONNX, texts=TEXTS), live.rest.predict(SCRIPTED, texts=TEXTS), strict=False):
        assert_same(got, want)
    assert_same(live.grpc.predict(ONNX, TEXTS[0]), live.rest.predict(SCRIPTED, TEXTS[0]))


def test_onnx_archive_rejects_bad_requests_per_request(live, pair):
    from textclf.torchserve.errors import TorchServeError

    with pytest.raises(TorchServeError) as e:
        live.rest.predict(ONNX, texts=[])
    assert (e.value.status, e.value.kind) == (400, "invalid_request")
    assert live.rest.predict(ONNX, TEXTS[1])["label"] in LABELS  # the worker is still there
