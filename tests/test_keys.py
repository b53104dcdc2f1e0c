"""textclf.torchserve.keys without a server: key_file.json parsing, expiry, and the /token refresh through a fake
requests.get that rewrites the file the way TorchServe does."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from textclf.core.errors import Failure
from textclf.torchserve import keys
from textclf.torchserve.errors import ServerUnreachable
from textclf.torchserve.keys import KeyFileError, Keys, KeyStore, bearer, parse_expiry, read_keys

MGMT = "http://127.0.0.1:8081"
PAST = "2000-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00.123456789Z"


def write_keys(path: Path, management: str = "m1", inference: str = "i1", api: str = "a1",
               management_expiry: str | None = FUTURE, inference_expiry: str | None = FUTURE) -> Path:
    def entry(key, expiry):
        return {"key": key, **({"expiration time": expiry} if expiry else {})}

    path.write_text(json.dumps({"management": entry(management, management_expiry),
                                "inference": entry(inference, inference_expiry), "API": {"key": api}}))
    return path


class FakeTokenApi:
    """requests.get for GET <management>/token: records each call and, like TorchServe, writes a new key
    with a fresh expiry into key_file.json; or answers `status`, or raises `error`."""

    def __init__(self, key_file: Path, status: int = 200, error: Exception | None = None):
        self.key_file, self.status, self.error, self.calls = key_file, status, error, []

    def __call__(self, url, params=None, timeout=None, headers=None):
        self.calls.append({"url": url, "params": params, "timeout": timeout, "headers": headers})
        if self.error is not None:
            raise self.error
        if self.status == 200:
            data = json.loads(self.key_file.read_text())
            data[params["type"]] = {"key": f"fresh-{params['type']}", "expiration time": FUTURE}
            self.key_file.write_text(json.dumps(data))
        r = requests.Response()
        r.status_code = self.status
        return r


@pytest.fixture
def key_file(tmp_path) -> Path:
    return write_keys(tmp_path / "key_file.json")


@pytest.fixture
def token_api(key_file, monkeypatch) -> FakeTokenApi:
    api = FakeTokenApi(key_file)
    monkeypatch.setattr(keys.requests, "get", api)
    return api


# ---- parse_expiry ------------------------------------------------------------------------------------------
def test_parse_expiry_reads_javas_nanoseconds_as_utc_microseconds():
    assert parse_expiry("2026-01-01T12:00:00.123456789Z") == datetime(2026, 1, 1, 12, 0, 0, 123456, timezone.utc)
    assert parse_expiry("2026-01-01T12:00:00.5Z") == datetime(2026, 1, 1, 12, 0, 0, 500000, timezone.utc)
    assert parse_expiry(" 2026-01-01T12:00:00Z ") == datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", [None, "", "2026-01-01 12:00:00", "2026-01-01T12:00:00+01:00", "tomorrow"])
def test_parse_expiry_without_a_usable_instant_is_none(text):
    assert parse_expiry(text) is None


# ---- read_keys -------------------------------------------------------------------------------------------
def test_read_keys_picks_the_key_per_api(key_file):
    got = read_keys(key_file)
    assert (got.key("management"), got.key("inference"), got.api) == ("m1", "i1", "a1")
    assert got.inference_expiry == parse_expiry(FUTURE)
    with pytest.raises(ValueError, match="api must be one of"):
        got.key("API")


def test_missing_key_file_says_to_start_the_server(tmp_path):
    with pytest.raises(KeyFileError) as e:
        read_keys(tmp_path / "absent.json")
    assert str(e.value) == (f"{tmp_path / 'absent.json'} not found: is TorchServe running with this state dir? "
                            "(start it with `textclf serve`)")
    assert isinstance(e.value, Failure)  # entry points print it as one `error:` line, exit 1


@pytest.mark.parametrize("text, error", [("{not json", "JSONDecodeError"), ('{"management": {"key": "m"}}', "KeyError"),
                                         ("[1, 2]", "TypeError")])
def test_unreadable_key_file_is_named(tmp_path, text, error):
    path = tmp_path / "key_file.json"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=rf"key_file.json is not a TorchServe key file \({error}: "):
        read_keys(path)


def test_expired_compares_with_now_and_a_key_without_expiry_never_expires():
    at = parse_expiry("2026-01-01T12:00:00Z")
    k = Keys("m", "i", "a", management_expiry=None, inference_expiry=at)
    assert not k.expired("inference", now=at - timedelta(seconds=1))
    assert k.expired("inference", now=at) and k.expired("inference", now=at + timedelta(days=1))
    assert not k.expired("management", now=at + timedelta(days=365))


# ---- KeyStore --------------------------------------------------------------------------------------------
def test_key_is_read_from_the_file_each_time(key_file, token_api):
    store = KeyStore(key_file, MGMT)
    assert store.key("inference") == "i1"
    write_keys(key_file, inference="i2")
    assert store.key("inference") == "i2" and store.headers("inference") == {"Authorization": "Bearer i2"}
    assert token_api.calls == []


def test_expired_key_is_refreshed_before_use(key_file, token_api):
    write_keys(key_file, management_expiry=PAST)
    assert KeyStore(key_file, MGMT + "/").key("management") == "fresh-management"
    assert token_api.calls == [{"url": f"{MGMT}/token", "params": {"type": "management"}, "timeout": 10.0,
                                "headers": {"Authorization": "Bearer a1"}}]  # authorised by the API key


def test_expired_key_without_management_url_is_sent_as_is(key_file, token_api):
    write_keys(key_file, inference_expiry=PAST)
    assert KeyStore(key_file).key("inference") == "i1" and token_api.calls == []


def test_current_is_none_without_a_key_file(tmp_path):
    assert KeyStore(tmp_path / "absent.json", MGMT).current("inference") is None
    assert bearer(None) == {} and bearer("k") == {"Authorization": "Bearer k"}


def test_refresh_refused_names_status_and_file(key_file, monkeypatch):
    monkeypatch.setattr(keys.requests, "get", FakeTokenApi(key_file, status=400))
    with pytest.raises(KeyFileError, match=r"token refresh for the inference key refused \(HTTP 400\): the API key in "
                                           + str(key_file)):
        KeyStore(key_file, MGMT).refresh("inference")


def test_refresh_needs_a_management_url_and_a_known_api(key_file, token_api):
    with pytest.raises(KeyFileError, match="cannot refresh the inference key: no management URL given"):
        KeyStore(key_file).refresh("inference")
    with pytest.raises(ValueError):
        KeyStore(key_file, MGMT).refresh("API")
    assert token_api.calls == []


def test_refresh_of_a_server_that_is_down_is_one_line(key_file, monkeypatch):
    monkeypatch.setattr(keys.requests, "get", FakeTokenApi(key_file, error=requests.ConnectionError("refused")))
    with pytest.raises(ServerUnreachable) as e:
        KeyStore(key_file, MGMT).refresh("inference")
    assert str(e.value).startswith(f"cannot reach TorchServe at {MGMT} (ConnectionError): is it running?")


def test_refresh_that_times_out_is_a_key_file_error(key_file, monkeypatch):
    monkeypatch.setattr(keys.requests, "get", FakeTokenApi(key_file, error=requests.ReadTimeout("slow")))
    with pytest.raises(KeyFileError, match=f"got no answer from {MGMT} within 10s"):
        KeyStore(key_file, MGMT).refresh("inference")


def test_recover_prefers_the_files_new_key(key_file, token_api):
    write_keys(key_file, inference="i2", inference_expiry=PAST)  # even expired: the server may not think so
    assert KeyStore(key_file, MGMT).recover("inference", "i1") == "i2"
    assert token_api.calls == []


def test_recover_refreshes_the_same_key_once_expired(key_file, token_api):
    write_keys(key_file, inference_expiry=PAST)
    assert KeyStore(key_file, MGMT).recover("inference", "i1") == "fresh-inference"
    assert [c["params"] for c in token_api.calls] == [{"type": "inference"}]


def test_recover_gives_up_when_nothing_helps(key_file, token_api, monkeypatch, tmp_path):
    store = KeyStore(key_file, MGMT)
    assert store.recover("inference", "i1") is None  # same key, not expired: it is simply wrong
    assert KeyStore(tmp_path / "absent.json", MGMT).recover("inference", "i1") is None
    assert token_api.calls == []
    write_keys(key_file, inference_expiry=PAST)
    monkeypatch.setattr(keys.requests, "get", FakeTokenApi(key_file, status=400))
    assert store.recover("inference", "i1") is None  # the refresh itself was refused


def test_print_key_cli(tmp_path, capsys):
    """`KEY=$(textclf keys)`: what the docs' curl examples use."""
    import json

    from textclf.core.options import run
    from textclf.torchserve.keys import PrintKeyConfig, print_key

    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}))
    assert run(print_key, PrintKeyConfig, ["--key-file", str(key_file), "--api", "management"], show=str) == 0
    assert capsys.readouterr().out == "m\n"
    assert run(print_key, PrintKeyConfig, ["--key-file", str(tmp_path / "missing.json")], show=str) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.json'} not found")
