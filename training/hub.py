"""Fail fast when a Hugging Face hub id is asked for and the hub cannot be reached.

Without this, transformers retries with back-off for about a minute before saying it is offline.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from training.cli import UserError

OFFLINE_HINT = ("offline, use a local folder in Hugging Face format (--model DIR), the embedded default encoder "
                "(omit --model), local CSV/JSONL/Parquet data (--data DIR) or the embedded dataset builtin:tweets")


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None when the hub answers a TCP connect, else a short reason."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {host}: {e.strerror or e}"
    return None


def require_hub(kind: str, name: str) -> None:
    """Raise one clear UserError when `name` would need the hub and the hub is not there."""
    reason = hub_unreachable_reason()
    if reason:
        raise UserError(f"{kind} '{name}' is not a local path and would come from the Hugging Face hub, "
                        f"but {reason}; {OFFLINE_HINT}")
