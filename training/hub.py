"""Fail fast when a Hugging Face hub id is asked for and the hub cannot be reached.

Without this, transformers and datasets retry with back-off for up to a minute before saying they
are offline. With HF_HUB_OFFLINE=1 the libraries answer from their cache at once, so no probe.
"""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from huggingface_hub import constants

PROBE_TIMEOUT_S = 3.0
OFFLINE_HINT = ("offline, use a local model directory (--model DIR) or the embedded encoder (omit --model), "
                "and local CSV/JSONL/Parquet files (--data DIR) or the embedded dataset builtin:tweets")


def hub_unreachable_reason(endpoint: str | None = None) -> str | None:
    """Why the hub cannot be reached, or None. Bounded in time, DNS lookup included."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection proves nothing; let the library try
    if endpoint is None:

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = ["timed out"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            result[0] = None
        except OSError as e:
            result[0] = e.strerror or type(e).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1)
    return f"{host} unreachable: {result[0]}" if result[0] else None


def hub_offline_mode() -> bool:

    return bool(constants.HF_HUB_OFFLINE)
