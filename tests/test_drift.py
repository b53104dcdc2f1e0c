"""textclf.pipelines.drift without a server: reading the counters of one model from Prometheus text, windows between
snapshots, where the reference profile is read from, and whole checks against canned /metrics answers: a cron
series that starts itself, a window without live texts, and which versions were summed."""
from __future__ import annotations

import json
import logging
import zipfile
from types import SimpleNamespace

import pytest

from handlers.drift_bins import PROFILE_FILE, Profile
from textclf.core.errors import UserError
from textclf.pipelines import drift
from textclf.pipelines.drift import DriftConfig, minus, parse_metrics, read_reference, versions_of

TEXT = """# HELP PredictionsPerLabel Torchserve prometheus counter metric with unit: Count
# TYPE PredictionsPerLabel counter
PredictionsPerLabel{ModelName="clf",ModelVersion="1.0",Level="Model",Label="pos",Hostname="h",} 7.0
PredictionsPerLabel{ModelName="clf",ModelVersion="2.0",Level="Model",Label="pos",Hostname="h",} 2.0
PredictionsPerLabel{ModelName="other",ModelVersion="1.0",Level="Model",Label="pos",Hostname="h",} 100.0
ConfidenceBucket{ModelName="clf",ModelVersion="1.0",Level="Model",Bucket="le_0.9",Hostname="h",} 7.0
TokensBucket{ModelName="clf",ModelVersion="1.0",Level="Model",Bucket="le_16",Hostname="h",} 7.0
TextsAnswered{ModelName="clf",ModelVersion="1.0",Level="Model",Hostname="h",} 7.0
TokensSeen{ModelName="clf",ModelVersion="1.0",Level="Model",Hostname="h",} 70.0
TruncatedTexts{ModelName="clf",ModelVersion="1.0",Level="Model",Hostname="h",} 1.0
OutOfScopeTexts{ModelName="clf",ModelVersion="1.0",Level="Model",Hostname="h",} 2.0
ts_inference_requests_total{model_name="clf",model_version="default",hostname="h",} 9.0
"""


def test_counters_of_one_model_and_version_become_a_profile():
    live = parse_metrics(TEXT, "clf", "1.0")
    assert live == {"texts": 7, "labels": {"pos": 7}, "confidence": {"le_0.9": 7}, "tokens": {"le_16": 7},
                    "truncated": 1, "token_total": 70, "unknown_tokens": 0, "out_of_scope": 2}
    assert parse_metrics(TEXT, "clf")["labels"] == {"pos": 9}  # every version of the name
    assert parse_metrics(TEXT, "missing")["texts"] == 0


def test_window_since_a_snapshot_and_a_restart_in_between():
    earlier, later = parse_metrics(TEXT, "clf", "1.0"), parse_metrics(TEXT.replace(" 7.0", " 10.0"), "clf", "1.0")
    window = minus(later, earlier)
    assert window["texts"] == 3 and window["labels"] == {"pos": 3} and window["truncated"] == 0
    assert minus(earlier, later) is None  # counters went down: the workers restarted


def test_reference_from_a_bundle_an_archive_or_the_file(tmp_path):
    profile = {"texts": 1, "labels": {"a": 1}}
    (tmp_path / PROFILE_FILE).write_text(json.dumps(profile))
    with zipfile.ZipFile(tmp_path / "m.mar", "w") as z:
        z.writestr(PROFILE_FILE, json.dumps(profile))
    for where in (tmp_path, tmp_path / "m.mar", tmp_path / PROFILE_FILE):
        assert read_reference(where) == profile
    (tmp_path / "old").mkdir()
    with pytest.raises(UserError, match="no reference_profile.json; re-export the model"):
        read_reference(tmp_path / "old")


def test_versions_that_answered_are_the_ones_summed():
    assert versions_of(TEXT, "clf") == ["1.0", "2.0"] and versions_of(TEXT, "missing") == []


# ---- whole checks against a canned /metrics answer --------------------------------------------------------------
def reference_profile(path, n=300) -> str:
    profile = Profile()
    for _ in range(n):
        profile.add("pos", 0.85, 10, False, 0)
    path.write_text(json.dumps(profile.to_json()))
    return str(path)


def metrics_text(texts: dict[str, int]) -> str:
    """The handler's counters for clf, `texts[version]` texts per version, all alike the reference."""
    lines = []
    for version, n in texts.items():
        labels = f'ModelName="clf",ModelVersion="{version}",Level="Model"'
        lines += [f'PredictionsPerLabel{{{labels},Label="pos",}} {n}.0', f'ConfidenceBucket{{{labels},Bucket="le_0.9",}} {n}.0',
                  f'TokensBucket{{{labels},Bucket="le_16",}} {n}.0', f"TextsAnswered{{{labels},}} {n}.0",
                  f"TokensSeen{{{labels},}} {10 * n}.0", f"TruncatedTexts{{{labels},}} 0.0"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def served(monkeypatch):
    """Set `served.text` to what /metrics answers."""
    state = SimpleNamespace(text="")
    monkeypatch.setattr(drift.requests, "get", lambda url, timeout: SimpleNamespace(text=state.text))
    return state


def test_a_cron_series_starts_on_its_first_run_and_then_judges_each_window(served, tmp_path, caplog):
    reference, snapshot = reference_profile(tmp_path / "ref.json"), tmp_path / "logs" / "snapshot.json"
    served.text = metrics_text({"1.0": 250})
    config = DriftConfig(reference=reference, name="clf", since=snapshot, save_snapshot=snapshot)  # no snapshot yet
    with caplog.at_level(logging.INFO, logger="textclf.pipelines.drift"):
        first = drift.check(config)
    assert (first["verdict"], first["live_texts"], first["window"]) == ("stable", 250, "since the workers started")
    assert f"no snapshot at {snapshot} yet: judging all traffic since the workers started; the series starts" in caplog.text
    assert json.loads(snapshot.read_text())["texts"] == 250
    served.text = metrics_text({"1.0": 500})
    second = drift.check(DriftConfig(reference=reference, name="clf", since=snapshot, save_snapshot=snapshot))
    # The snapshot is read before the new one replaces it: the window is the 250 texts after it, not 0.
    assert second["live_texts"] == 250 and second["window"].startswith(f"since the snapshot {snapshot} (saved ")
    assert json.loads(snapshot.read_text())["texts"] == 500 and not list(snapshot.parent.glob(".*tmp*"))


def test_a_missing_since_without_the_same_save_snapshot_is_refused(tmp_path):
    reference = reference_profile(tmp_path / "ref.json")
    for save in (None, tmp_path / "other.json"):
        with pytest.raises(UserError, match=r"--since .*missing.json: no such snapshot .*starts the series"):
            DriftConfig(reference=reference, name="clf", since=tmp_path / "missing.json", save_snapshot=save)


def test_a_snapshot_of_another_version_is_refused(served, tmp_path):
    reference, snapshot = reference_profile(tmp_path / "ref.json"), tmp_path / "snapshot.json"
    served.text = metrics_text({"1.0": 5})
    drift.check(DriftConfig(reference=reference, name="clf", version="1.0", save_snapshot=snapshot))
    with pytest.raises(UserError, match="is a snapshot of clf version 1.0, not of every version of clf"):
        drift.check(DriftConfig(reference=reference, name="clf", since=snapshot))


def test_no_live_texts_is_said_and_never_an_alert(served, tmp_path, capsys):
    reference = reference_profile(tmp_path / "ref.json")
    served.text = ""  # no counters: nothing answered since the workers started
    code = drift.command(["--reference", reference, "--name", "clf", "--out", str(tmp_path / "drift.json")])
    out = capsys.readouterr().out
    assert code == 0 and "alert" not in out.replace("not an alert", "")
    assert out.splitlines() == [
        "traffic: every version of clf, summed (none has answered yet; --version judges one), since the workers started",
        "verdict: no live texts: nothing to compare with the 300 reference texts (not an alert)"]
    saved = json.loads((tmp_path / "drift.json").read_text())
    assert (saved["verdict"], saved["live_texts"], saved["features"], saved["versions"]) == ("no live texts", 0, {}, [])


def test_without_version_the_summed_versions_are_named(served, tmp_path, capsys):
    reference = reference_profile(tmp_path / "ref.json")
    served.text = metrics_text({"1.0": 150, "2.0": 100})
    assert drift.command(["--reference", reference, "--name", "clf"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "traffic: every version of clf, summed (1.0, 2.0; --version judges one), since the workers started"
    assert out[-1] == "verdict: stable (250 live texts vs 300 reference; at least 200 needed to judge)"
    assert drift.command(["--reference", reference, "--name", "clf", "--version", "2.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "traffic: clf version 2.0, since the workers started" and "too little traffic (100 live" in out[-1]


def test_help_documents_the_exit_status_and_the_summing(capsys):
    with pytest.raises(SystemExit):
        drift.command(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 1 on a drift alert; 0 when stable or watch, and also when the window has no live texts" in text
    assert "every version of the name, summed" in text and "the series starts" in text
