"""TorchServe 0.12 API keys: read key_file.json, pick the key per API, refresh an expired one.

TorchServe writes key_file.json into its working directory at start-up:

    {"management": {"key": "...", "expiration time": "2026-01-01T12:00:00.123456789Z"},
     "inference":  {"key": "...", "expiration time": "..."},
     "API":        {"key": "..."}}

The management key opens the management API (REST :8081, gRPC management), the inference key
the inference API (REST :8080 including /ping, gRPC inference), and the API key only the token
API, `GET <management>/token?type=management|inference`, which replaces that key (with a fresh
expiry) in the file. Keys expire after token_expiration_min (default 60) minutes.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import requests

from textclf.core.errors import Failure
from textclf.core.options import option, run
from textclf.torchserve.errors import ServerUnreachable

APIS = ("management", "inference")


class KeyFileError(Failure):
    """key_file.json is missing or unreadable, or a key could not be refreshed; the message names the
    file and what to do."""


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for `key`; none without a key (a server without token auth accepts
    that, one with it says so)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def parse_expiry(text: str | None) -> datetime | None:
    """Java's Instant.toString() (nanosecond fraction, 'Z') as an aware datetime; None if absent."""
    if not text:
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text.strip())
    if not match:
        return None
    base = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    micros = int((match.group(2) or "0")[:6].ljust(6, "0"))
    return base.replace(microsecond=micros)


@dataclass(frozen=True)
class Keys:
    management: str
    inference: str
    api: str
    management_expiry: datetime | None = None
    inference_expiry: datetime | None = None

    def key(self, api: str) -> str:
        _check_api(api)
        return getattr(self, api)

    def expired(self, api: str, now: datetime | None = None) -> bool:
        _check_api(api)
        expiry = getattr(self, f"{api}_expiry")
        return expiry is not None and expiry <= (now or datetime.now(timezone.utc))


def _check_api(api: str) -> None:
    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}, got {api!r}")


def read_keys(key_file: Path) -> Keys:
    key_file = Path(key_file)
    try:
        data = json.loads(key_file.read_text(encoding="utf-8"))
        return Keys(
            management=data["management"]["key"], inference=data["inference"]["key"], api=data["API"]["key"],
            management_expiry=parse_expiry(data["management"].get("expiration time")),
            inference_expiry=parse_expiry(data["inference"].get("expiration time")),
        )
    except FileNotFoundError:
        raise KeyFileError(f"{key_file} not found: is TorchServe running with this state dir? "
                           "(start it with `textclf serve`)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{key_file} is not a TorchServe key file ({type(e).__name__}: {e})") from None


class KeyStore:
    """The current key per API, re-read from key_file.json on demand and refreshed when expired."""

    def __init__(self, key_file: Path, management_url: str | None = None, timeout: float = 10.0):
        self.key_file = Path(key_file)
        self.management_url = management_url.rstrip("/") if management_url else None
        self.timeout = timeout

    def key(self, api: str) -> str:
        """The key to send for `api`, refreshing it first if the file says it has expired."""
        keys = read_keys(self.key_file)
        if keys.expired(api) and self.management_url:
            return self.refresh(api)
        return keys.key(api)

    def current(self, api: str) -> str | None:
        """Like key(), but None when key_file.json cannot be read: the clients then send no token."""
        try:
            return self.key(api)
        except KeyFileError:
            return None

    def headers(self, api: str) -> dict[str, str]:
        return bearer(self.key(api))

    def refresh(self, api: str) -> str:
        """Ask TorchServe for a new `api` key (authorised by the API key) and return it from the re-read file."""
        _check_api(api)
        if not self.management_url:
            raise KeyFileError(f"cannot refresh the {api} key: no management URL given")
        api_key = read_keys(self.key_file).api
        try:
            r = requests.get(f"{self.management_url}/token", params={"type": api}, timeout=self.timeout,
                             headers=bearer(api_key))
        except requests.ConnectionError as e:  # ConnectTimeout included: the server never answered
            raise ServerUnreachable(self.management_url, "ConnectionError") from e
        except requests.Timeout:
            raise KeyFileError(f"token refresh for the {api} key got no answer from {self.management_url} "
                               f"within {self.timeout:g}s") from None
        if r.status_code != 200:
            raise KeyFileError(f"token refresh for the {api} key refused (HTTP {r.status_code}): the API key in "
                               f"{self.key_file} is not the running server's; restart it with `textclf serve`")
        return read_keys(self.key_file).key(api)

    def recover(self, api: str, refused: str | None) -> str | None:
        """After `refused` was refused: the file's current key if it changed (server restarted, key
        rotated), else a refreshed one if it has expired; None when neither helps."""
        try:
            keys = read_keys(self.key_file)
            if keys.key(api) != refused:
                return keys.key(api)
            if keys.expired(api) and self.management_url:
                return self.refresh(api)
        except KeyFileError:
            pass
        return None


@dataclass
class PrintKeyConfig:
    """Print one API key of the server's key_file.json, for curl: KEY=$(.venv/bin/python -m textclf.torchserve.keys)"""

    api: Literal["inference", "management"] = option("which key", "inference")
    key_file: Path = option("the server's key file (`textclf serve` writes it into the checkout's root)",
                            Path("key_file.json"))


def print_key(config: PrintKeyConfig) -> str:
    return read_keys(config.key_file).key(config.api)


def command(argv=None, prog="python -m textclf.torchserve.keys") -> int:
    return run(print_key, PrintKeyConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
