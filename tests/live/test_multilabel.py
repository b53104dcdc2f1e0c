"""A multi-label archive served next to the session's single-label one: label sets over REST, KServe v1 and
gRPC, the same per-request errors, and the single-label model unchanged beside it."""
import pytest

from tests.live.conftest import NAME, V1_LABELS
from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
TAGS = "tags"
TAG_LABELS = ("billing", "card", "refund")


@pytest.fixture(scope="module")
def tags(live, tmp_path_factory):
    from textclf.torchserve.archive import ArchiveConfig, build_archive

    # Thresholds 0.01 and 0.99 for a sigmoid that stays near 0.5: always, never, always.
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("tags") / "export", labels=TAG_LABELS,
                              thresholds=[0.01, 0.99, 0.01])
    archive = build_archive(ArchiveConfig(bundle=bundle, name=TAGS, version="1.0", store=live.store, batch_size=8,
                                          max_batch_delay=50))
    live.rest.register(TAGS, archive.name, initial_workers=1, batch_size=8, max_batch_delay=50)
    yield
    live.rest.unregister(TAGS, "1.0")
    archive.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def assert_tags(answer: dict) -> None:
    assert answer["labels"] == ["billing", "refund"] or answer["labels"] == ["refund", "billing"]
    assert answer["label"] in TAG_LABELS and set(answer["scores"]) <= set(TAG_LABELS)


def test_rest_kserve_and_grpc_answer_label_sets(live, tags):
    assert_tags(live.rest.predict(TAGS, "my card was charged twice, refund me"))
    for answer in live.rest.predict(TAGS, texts=["refund please", "card declined"], top_k=1):
        assert_tags(answer)
        assert len(answer["scores"]) == 1  # top_k limits the scores, not the label set
    assert_tags(live.rest.predict(TAGS, instances=["refund please"])["predictions"][0])
    assert_tags(live.grpc.predict(TAGS, "refund please"))


def test_errors_and_the_single_label_model_beside_it(live, tags):
    from textclf.torchserve.errors import TorchServeError

    with pytest.raises(TorchServeError) as e:
        live.rest.predict(TAGS, texts=[])
    assert (e.value.status, e.value.kind) == (400, "invalid_request")
    single = live.rest.predict(NAME, "hello")
    assert "labels" not in single and set(single["scores"]) == V1_LABELS
