"""tsclient.drift without a server: reading the counters of one model from Prometheus text, windows between
snapshots, and where the reference profile is read from."""
from __future__ import annotations

import json
import zipfile

import pytest

from cli import UserError
from handlers.profile import PROFILE_FILE
from tsclient.drift import minus, parse_metrics, read_reference

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
ts_inference_requests_total{model_name="clf",model_version="default",hostname="h",} 9.0
"""


def test_counters_of_one_model_and_version_become_a_profile():
    live = parse_metrics(TEXT, "clf", "1.0")
    assert live == {"texts": 7, "labels": {"pos": 7}, "confidence": {"le_0.9": 7}, "tokens": {"le_16": 7},
                    "truncated": 1, "token_total": 70, "unknown_tokens": 0}
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
