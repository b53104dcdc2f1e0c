"""Token authorization (on by default in 0.12) and allowed_urls (no URL at all may be registered)."""
import json

import pytest
import requests

from tests.live.conftest import NAME
from textclf.torchserve.errors import TokenRefused, TorchServeError
from textclf.torchserve.keys import KeyStore, bearer, read_keys
from textclf.torchserve.rest import TorchServeClient

pytestmark = pytest.mark.live


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong-key"}])
def test_missing_or_wrong_token_is_refused_with_400(live, headers):
    url = f"{live.endpoints.inference_url}/predictions/{NAME}"
    r = requests.post(url, data="hello", headers={"Content-Type": "text/plain", **headers}, timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"


def test_management_key_does_not_open_inference(live):
    keys = read_keys(live.endpoints.key_file)
    r = requests.get(f"{live.endpoints.inference_url}/ping", timeout=30,
                     headers=bearer(keys.management))
    assert r.status_code == 400


def test_client_says_token_refused_in_one_line(live, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "x"}, "inference": {"key": "x"}, "API": {"key": "x"}}))
    client = TorchServeClient(live.endpoints.inference_url, live.endpoints.management_url, key_file)
    for call in (lambda: client.predict(NAME, "hello"), lambda: client.list_models()):
        with pytest.raises(TokenRefused) as e:
            call()
        message = str(e.value)
        assert message.startswith("token refused:") and "InvalidKeyException" in message
        assert str(key_file) in message and "\n" not in message


def test_missing_key_file_is_named(live, tmp_path):
    client = TorchServeClient(live.endpoints.inference_url, live.endpoints.management_url, tmp_path / "absent.json")
    with pytest.raises(TokenRefused, match="absent.json is missing, wrong or expired"):
        client.health()


def test_key_file_has_unexpired_keys_per_api(live):
    keys = read_keys(live.endpoints.key_file)
    assert len({keys.management, keys.inference, keys.api}) == 3
    assert keys.inference_expiry is not None and not keys.expired("inference")
    assert keys.management_expiry is not None and not keys.expired("management")


def test_token_api_rotates_a_key(live):
    store = KeyStore(live.endpoints.key_file, live.endpoints.management_url)
    old = read_keys(live.endpoints.key_file).inference
    new = store.refresh("inference")
    assert new != old and read_keys(live.endpoints.key_file).inference == new
    ping = f"{live.endpoints.inference_url}/ping"
    assert requests.get(ping, headers=bearer(old), timeout=30).status_code == 400
    assert live.rest.health() == {"status": "Healthy"}  # the client re-reads the file


def test_refused_stale_key_is_recovered_once(live, monkeypatch):
    stale = read_keys(live.endpoints.key_file).inference
    KeyStore(live.endpoints.key_file, live.endpoints.management_url).refresh("inference")
    client = TorchServeClient(live.endpoints.inference_url, live.endpoints.management_url, live.endpoints.key_file)
    monkeypatch.setattr(client, "_key", lambda api: stale)  # as if the key rotated between read and send
    assert client.health() == {"status": "Healthy"}


def test_expired_key_is_refreshed_before_use(live, monkeypatch):
    from textclf.torchserve import keys

    before = read_keys(live.endpoints.key_file).inference
    monkeypatch.setattr(keys.Keys, "expired", lambda self, api, now=None: True)
    assert live.rest.predict(NAME, "hello")["label"]
    assert read_keys(live.endpoints.key_file).inference != before


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/clf-1.0.mar", "https://example.com/clf-1.0.mar",
                                 "file://{store}/clf-1.0.mar"])
def test_url_registration_is_refused(live, url):
    with pytest.raises(TorchServeError) as e:
        live.rest.register("from-url", url.format(store=live.store))
    assert e.value.status == 404 and "does not match any allowed URL" in e.value.message
    assert all(m["modelName"] != "from-url" for m in live.rest.list_models())
