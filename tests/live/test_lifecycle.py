"""Roll a second version forward and back, scale workers, through textclf.torchserve.ops (what `make` runs)."""
import pytest

from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from textclf.torchserve import ops
from textclf.torchserve.errors import TorchServeError

pytestmark = pytest.mark.live


@pytest.fixture
def target(live):
    return ops.Target(state_dir=live.state_dir)  # reads the derived config the server was started with


def labels_of(answer: dict) -> set:
    return set(answer["scores"])


def workers(live, version: str) -> tuple[int, int, int]:
    (d,) = live.rest.describe(NAME, version)
    return d["minWorkers"], d["maxWorkers"], sum(w["status"] == "READY" for w in d["workers"])


def test_roll_forward_and_back(live, target):
    ops.main(ops.RegisterConfig(NAME, "2.0", workers=1, target=target))
    try:
        versions = {d["modelVersion"] for d in ops.main(ops.ModelsConfig(NAME, "all", target=target))}
        assert versions == {"1.0", "2.0"}
        assert labels_of(live.rest.predict(NAME, "hello")) == V1_LABELS  # registering does not switch

        ops.main(ops.SetDefaultConfig(NAME, "2.0", target=target))
        assert labels_of(ops.main(ops.PredictConfig(NAME, "hello", target=target))) == V2_LABELS
        assert labels_of(live.grpc.predict(NAME, "hello")) == V2_LABELS
        assert labels_of(live.rest.predict(NAME, "hello", version="1.0")) == V1_LABELS
        assert labels_of(live.rest.predict(NAME, "hello", version="2.0")) == V2_LABELS

        with pytest.raises(TorchServeError, match="Cannot remove default version"):
            ops.main(ops.UnregisterConfig(NAME, "2.0", target=target))  # TorchServe keeps its default
        ops.main(ops.SetDefaultConfig(NAME, "1.0", target=target))
    finally:
        live.rest.set_default(NAME, "1.0")
        ops.main(ops.UnregisterConfig(NAME, "2.0", target=target))
    assert labels_of(live.rest.predict(NAME, "hello")) == V1_LABELS
    with pytest.raises(TorchServeError) as e:
        live.rest.predict(NAME, "hello", version="2.0")
    assert e.value.status == 404
    assert [d["modelVersion"] for d in live.rest.describe(NAME, "all")] == ["1.0"]


def test_scale_up_and_down(live, target):
    try:
        ops.main(ops.ScaleConfig(NAME, workers=2, version="1.0", target=target))
        assert workers(live, "1.0") == (2, 2, 2)
    finally:
        ops.main(ops.ScaleConfig(NAME, workers=1, target=target))  # no version: the default one
    assert workers(live, "1.0") == (1, 1, 1)
    assert labels_of(live.rest.predict(NAME, "still serving")) == V1_LABELS


def test_register_workers_starts_that_many_and_models_lists_every_version(live, target):
    """`make register NAME=clf VERSION=2.0 WORKERS=2` on an archive planned for up to 2 workers (minWorkers 1)."""
    ops.main(ops.RegisterConfig(NAME, "2.0", workers=2, target=target))
    try:
        assert workers(live, "2.0") == (2, 2, 2)
        (listed,) = [m for m in ops.main(ops.ModelsConfig(target=target)) if m["modelName"] == NAME]
        assert listed["defaultVersion"] == "1.0"
        assert [(v["version"], v["archive"], v["workers"]) for v in listed["versions"]] == [
            ("1.0", f"{NAME}-1.0.mar", 1), ("2.0", f"{NAME}-2.0.mar", 2)]
        assert all((v["batchSize"], v["maxBatchDelay"]) == (8, 50) for v in listed["versions"])  # the archive's
    finally:
        ops.main(ops.UnregisterConfig(NAME, "2.0", target=target))


def test_more_workers_than_the_archive_plans_are_refused(live, target):
    with pytest.raises(ops.OpsError, match=r"clf-2\.0\.mar plans at most 2 worker\(s\).*--max-workers 3"):
        ops.main(ops.RegisterConfig(NAME, "2.0", workers=3, target=target))
    with pytest.raises(ops.OpsError, match=r"clf-1\.0\.mar plans at most 2 worker\(s\)"):
        ops.main(ops.ScaleConfig(NAME, workers=3, version="1.0", target=target))
    assert [d["modelVersion"] for d in live.rest.describe(NAME, "all")] == ["1.0"]
    assert workers(live, "1.0") == (1, 1, 1)


def test_register_missing_archive_names_the_store(live, target):
    with pytest.raises(ops.OpsError, match=r"clf-9\.9\.mar not found \(archives in the store: clf-1\.0\.mar, clf-2\.0\.mar\)"):
        ops.main(ops.RegisterConfig(NAME, "9.9", target=target))


def test_registering_a_registered_version_is_refused(live, target):
    with pytest.raises(TorchServeError) as e:
        ops.main(ops.RegisterConfig(NAME, "1.0", target=target))
    assert e.value.status == 409 and "already registered" in e.value.message.lower()


def test_no_worker_503_is_retried_a_bounded_number_of_times(live, target):
    """With 0 workers TorchServe answers 503; predictions retry with backoff, then fail with its message."""
    from textclf.torchserve.rest import TorchServeClient

    ep = live.endpoints
    client = TorchServeClient(ep.inference_url, ep.management_url, ep.key_file, retries=2, backoff_s=0.01)
    statuses = []
    client.session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))
    try:
        ops.main(ops.ScaleConfig(NAME, workers=0, version="1.0", target=target))
        with pytest.raises(TorchServeError) as e:
            client.predict(NAME, "hello")
        assert e.value.status == 503 and "worker" in e.value.message
        assert statuses == [503, 503, 503]  # first try + 2 retries
        statuses.clear()
        with pytest.raises(TorchServeError):
            client.set_default(NAME, "9.9")  # management calls are never retried
        assert len(statuses) == 1
    finally:
        ops.main(ops.ScaleConfig(NAME, workers=1, version="1.0", target=target))
    assert workers(live, "1.0") == (1, 1, 1)


def test_switch_cycles_under_load_lose_no_request(live):
    """bench.switch_stress for a few cycles on a server of its own: register v2, make it the default, roll
    back, unregister it, under 8 concurrent clients. Before unregister drained the version's running batch
    (TorchServeClient.drain), 3 such cycles left 16 requests unanswered for good."""
    from bench.switch_stress import StressConfig, stress

    result = stress(StressConfig(cycles=3, concurrency=8, dwell_s=0.3))
    assert result["lost"] == 0, result["wrong_answers"]
    assert result["valid"] > 50 and set(result["answers_by_labels"]) >= {"negative,positive",
                                                                          "negative,neutral,positive"}
