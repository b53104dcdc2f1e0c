"""An AOTInductor archive (model.pt2) served next to the session's TorchScript one: over REST and gRPC it answers
as the handler answers in-process, and as the TorchScript archive of the same tiny model."""
import pytest

from tests.test_handler import make_handler, run

pytestmark = pytest.mark.live
PT2, SCRIPTED = "pt2-clf", "pt2-twin-clf"
TEXTS = ["the film was a delight", "why was my payment declined at the shop"]


@pytest.fixture(scope="module")
def served(live, pt2_tiny_bundles):
    """The session's tiny model.pt2 and model.pt bundles, archived and registered; unregistered and their archives
    removed at the end, so the server and its store are as they were."""
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    archives = []
    for name, runtime in ((PT2, "aotinductor"), (SCRIPTED, "torchscript")):
        archive = build_archive(ArchiveConfig(bundle=pt2_tiny_bundles[runtime], name=name, version="1.0",
                                              store=live.store))
        live.rest.register(name, archive.name, initial_workers=1)
        archives.append((name, archive))
    yield
    for name, archive in archives:
        live.rest.unregister(name, "1.0")
        archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


@pytest.fixture(scope="module")
def in_process(pt2_tiny_bundles):
    """The answers of the pt2 handler run in this process, text by text."""
    handler = make_handler(pt2_tiny_bundles["aotinductor"])
    return [answer for _, _, answer in run(handler, [{"body": {"text": t}} for t in TEXTS])]


def assert_same(a: dict, b: dict, tolerance: float) -> None:
    assert a["label"] == b["label"] and list(a["scores"]) == list(b["scores"])
    assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=tolerance)


def test_pt2_archive_answers_as_in_process_over_rest_and_grpc(live, served, in_process):
    for text, want in zip(TEXTS, in_process, strict=True):
        assert_same(live.rest.predict(PT2, text), want, 1e-6)
        assert_same(live.grpc.predict(PT2, text), want, 1e-6)
    for got, want in zip(live.rest.predict(PT2, texts=TEXTS), in_process, strict=True):
        assert_same(got, want, 1e-5)  # batched together: other shapes, the same answers within fp32 noise


def test_pt2_archive_answers_as_the_torchscript_one(live, served):
    for got, want in zip(live.rest.predict(PT2, texts=TEXTS), live.rest.predict(SCRIPTED, texts=TEXTS), strict=True):
        assert_same(got, want, 1e-5)
