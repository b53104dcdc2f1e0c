"""Faults with traffic flowing: a worker killed with SIGKILL, broken archives registered, versions rolled
forward and back. The clients' retries (503, 507 "Worker died.", connection errors) must leave no request
failed, and the versions already serving must keep serving."""
from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from pathlib import Path

import psutil
import pytest
import torch

from tests.live.conftest import NAME, V1_LABELS, V2_LABELS
from tests.live.test_rest import assert_prediction
from tests.live.traffic import Traffic
from textclf.torchserve import ops, server
from textclf.torchserve.errors import TorchServeError

pytestmark = pytest.mark.live


@pytest.fixture
def target(live):
    return ops.Target(state_dir=live.state_dir)


def ready_workers(live, version: str = "1.0") -> list[tuple[str, int]]:
    (described,) = live.rest.describe(NAME, version)
    return [(w["id"], w["pid"]) for w in described["workers"] if w["status"] == "READY"]


def worker_processes(live) -> list[psutil.Process]:
    return server.processes(server.running_pid(live.cfg))["workers"]


def test_killed_worker_is_restarted_and_no_request_is_lost(live):
    with Traffic(live.endpoints, NAME) as traffic:
        traffic.wait_for_answers(20)
        for _ in range(3):  # until a kill has caught requests in flight (almost always the first one)
            [(worker_id, pid)] = ready_workers(live)
            os.kill(pid, signal.SIGKILL)
            traffic.wait_until(lambda pid=pid: [w for w in ready_workers(live) if w[1] != pid], "the restarted worker")
            traffic.wait_for_answers(20)
            if traffic.retried[507]:
                break
    assert traffic.errors == []
    assert set(traffic.labels) == {frozenset(V1_LABELS)}
    [(new_id, new_pid)] = ready_workers(live)
    assert new_id == worker_id and new_pid != pid and not psutil.pid_exists(pid)
    if not traffic.retried[507] and torch.cuda.is_available():
        # A GPU worker finishes a batch in milliseconds and then waits for the next: three kills can all
        # land between batches. Seen on an H200; on CPUs the first kill almost always catches a batch.
        pytest.skip("no request was in flight on the killed GPU worker in three kills; none was lost")
    assert traffic.retried[507] >= 1, "no request was in flight on the killed worker"


# ---- broken archives, built directly (textclf.torchserve.archive would refuse to build them) -------------------------
def rewrite_mar(good: Path, out: Path, version: str, edit) -> None:
    with zipfile.ZipFile(good) as z:
        files = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(files["MAR-INF/MANIFEST.json"])
    manifest["model"]["modelVersion"] = version
    files["MAR-INF/MANIFEST.json"] = json.dumps(manifest).encode()
    edit(files)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def tamper_model(files: dict) -> None:
    data = bytearray(files["model.pt"])
    data[len(data) // 2] ^= 0xFF
    files["model.pt"] = bytes(data)


def three_labels(files: dict) -> None:
    """Labels consistent across config.json, index_to_name.json and the card, but the model has two outputs."""
    labels = ["a", "b", "c"]
    config = json.loads(files["config.json"])
    config.update(id2label={str(i): x for i, x in enumerate(labels)}, label2id={x: i for i, x in enumerate(labels)})
    files["config.json"] = json.dumps(config).encode()
    files["index_to_name.json"] = json.dumps({str(i): x for i, x in enumerate(labels)}).encode()
    files["model_card.json"] = json.dumps(dict(json.loads(files["model_card.json"]), labels=labels)).encode()


def no_tokenizer(files: dict) -> None:
    for name in [n for n in files if n.startswith(("tokenizer", "vocab", "merges", "special_tokens"))]:
        del files[name]


def truncate(good: Path, out: Path) -> None:
    data = good.read_bytes()
    out.write_bytes(data[: len(data) // 2])


BROKEN = [  # version, how it is broken, what the registration error must say
    ("9.1", lambda good, out: truncate(good, out), "clf-9.1.mar is not a readable zip archive"),
    ("9.2", lambda good, out: rewrite_mar(good, out, "9.2", tamper_model), "does not match the model card's"),
    ("9.3", lambda good, out: rewrite_mar(good, out, "9.3", three_labels),
     "model outputs shape (1, 2) but the bundle has 3 labels"),
    ("9.4", lambda good, out: rewrite_mar(good, out, "9.4", no_tokenizer), "tokenizer_config.json: missing"),
]


@pytest.fixture
def broken_archive(live, request):
    version, build, _ = request.param
    path = live.store / f"{NAME}-{version}.mar"
    build(live.store / f"{NAME}-1.0.mar", path)
    yield version
    path.unlink(missing_ok=True)  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def worker_launches(live, version: str) -> int:
    """Worker processes TorchServe started for `version`: each one logs its pid once on start-up."""
    lines = (live.state_dir / "logs/model_log.log").read_text(errors="replace").splitlines()
    return len({line.split("pid=")[1] for line in lines if f"-{NAME}_{version}-stdout" in line and "pid=" in line})


@pytest.mark.parametrize("broken_archive, says", [(b, b[2]) for b in BROKEN], ids=["truncated", "tampered-model",
                         "labels-vs-outputs", "no-tokenizer"], indirect=["broken_archive"])
def test_broken_archive_fails_registration_clearly(live, target, broken_archive, says):
    version = broken_archive
    # A truncated archive is named before TorchServe is asked; the others fail in TorchServe (500) and
    # get the worker's reason from its log.
    with pytest.raises(ops.OpsError if version == "9.1" else TorchServeError) as e:
        ops.main(ops.RegisterConfig(NAME, version, workers=1, target=target))
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert version == "9.1" or e.value.status == 500
    # Registration is synchronous: the failed version is gone at once and nothing keeps retrying it.
    assert [d["modelVersion"] for d in live.rest.describe(NAME, "all")] == ["1.0"]
    time.sleep(2)  # TorchServe would retry a failed worker after 1 s, then 1, 2, 3, 5... s
    assert worker_launches(live, version) == (0 if version == "9.1" else 1)  # 9.1 never got as far as a worker
    assert [p.pid for p in worker_processes(live)] == [pid for _, pid in ready_workers(live)]
    assert_prediction(live.rest.predict(NAME, "still serving v1"))


def test_roll_forward_and_back_while_requests_flow(live, target):
    try:
        with Traffic(live.endpoints, NAME) as traffic:
            traffic.wait_for_answers(10)
            ops.main(ops.RegisterConfig(NAME, "2.0", workers=1, target=target))
            traffic.wait_for_answers(10)
            ops.main(ops.SetDefaultConfig(NAME, "2.0", target=target))
            traffic.wait_until(lambda: traffic.labels.count(frozenset(V2_LABELS)) >= 20, "answers from v2")
            ops.main(ops.SetDefaultConfig(NAME, "1.0", target=target))
            ops.main(ops.UnregisterConfig(NAME, "2.0", target=target))
            switched_back = len(traffic.labels)
            traffic.wait_for_answers(20)
        assert traffic.errors == []
        assert set(traffic.labels[switched_back + 10:]) == {frozenset(V1_LABELS)}  # a few were in flight on v2
    finally:
        if "2.0" in {d["modelVersion"] for d in live.rest.describe(NAME, "all")}:
            live.rest.set_default(NAME, "1.0")
            live.rest.unregister(NAME, "2.0")
    assert [d["modelVersion"] for d in live.rest.describe(NAME, "all")] == ["1.0"]
