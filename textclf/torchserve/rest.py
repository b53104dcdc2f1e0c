"""A small REST client for TorchServe's inference and management APIs, tokens included.

Every non-2xx answer becomes a TorchServeError (the HTTP status, TorchServe's or the handler's message, the
error's kind). A refused token is retried once with the key re-read or refreshed; predictions and read-only
management calls are retried with backoff when the server could not answer them, never calls that change
something; a list of texts longer than the server takes goes in several requests; a server out of reach is
ServerUnreachable. All are textclf.core.errors.Failure, so an entry point prints `error: ...` and exits 1.
Which TorchServe 0.12 answers are retried, and why unregister drains a version first:
docs/design/torchserve-quirks.md.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from handlers.config import HandlerConfig
from handlers.errors import ErrorType
from textclf.torchserve.errors import ServerUnreachable, TokenRefused, TorchServeError
from textclf.torchserve.keys import KeyStore, bearer

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 30.0  # the longest unregister waits for a version to fall idle
DRAIN_PROBE = b'{"drain_probe": true}'  # queued like a prediction; the handler rejects it (400, unknown field)
# The handler answers a request with more texts than its archive's max_texts_per_request with too_many_texts (413
# over REST) and says "at most N per request". The clients split a longer list into requests of at most
# `max_texts` texts: the handler's default unless told otherwise, lowered to N when a refusal states a smaller N.
DEFAULT_MAX_TEXTS = HandlerConfig.max_texts_per_request
TOO_MANY_TEXTS = ErrorType.TOO_MANY_TEXTS.code
STATED_LIMIT = re.compile(r"at most (\d+) per request")


@dataclass(frozen=True)
class Backoff:
    """How an idempotent call is retried (by this client and the gRPC one): at most `retries` more
    attempts, the first after `backoff_s` seconds, each later one after twice the wait before it."""

    retries: int = 4
    backoff_s: float = 0.25

    def __post_init__(self):
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0")

    def delays(self) -> Iterator[float]:
        return (self.backoff_s * 2 ** i for i in range(self.retries))


def pause(delays: Iterator[float]) -> bool:
    """Sleep the next of `delays` and return True; False, at once, when the retries are spent."""
    delay = next(delays, None)
    if delay is None:
        return False
    time.sleep(delay)
    return True


def retryable(status: int, body: bytes | str = b"") -> bool:
    """Whether a prediction (or a read-only management call) answered with `status` may simply be sent
    again (see the module docstring). TorchServe 0.12 also answers 500 ConcurrentModificationException
    when a describe races a worker starting or stopping (seen under load while versions switch)."""
    if status == 503:
        return True
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    return status in (500, 507) and ("Worker died" in text[:500] or "ConcurrentModificationException" in text[:500])


def error_from_response(r: requests.Response, key_file: Path) -> TorchServeError:
    if r.status_code == 413 and not r.content:
        # The frontend refuses the body before any handler sees it and says nothing more.
        size = len(r.request.body or b"") if r.request is not None else 0
        return TorchServeError(413, f"request body ({size} bytes) is larger than the server's max_request_size "
                                    "(config.properties); send fewer or shorter texts per request",
                               "RequestTooLarge")
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or json.dumps(body)
        kind = body.get("type")
    else:
        message, kind = (r.text.strip() or r.reason or "no message").replace("\n", " "), None
    if kind == "InvalidKeyException":
        return TokenRefused(r.status_code, message, key_file, kind)
    return TorchServeError(r.status_code, message, kind)


def stated_limit(error: TorchServeError) -> int | None:
    """The texts-per-request limit a too_many_texts refusal states (REST 413 or gRPC), or None."""
    match = STATED_LIMIT.search(error.message) if error.kind == TOO_MANY_TEXTS else None
    return int(match.group(1)) if match else None


def in_chunks(send: Callable[[list], Any], items: Sequence, limit: int, field: str) -> tuple[Any, int]:
    """Send `items` (the body's `field`: "texts" or "instances") in requests of at most `limit`, in order, and
    join the answers as one request's would be; a too_many_texts refusal stating a smaller limit splits again
    from the refused chunk on. Returns (the answer, the limit in the end). An empty list is sent as it is, for
    the server to refuse."""
    items, answers, start = list(items), [], 0
    while True:
        chunk = items[start: start + limit]
        try:
            answers.append(send(chunk))
        except TorchServeError as e:
            smaller = stated_limit(e)
            if smaller is None or not 1 <= smaller < len(chunk):
                raise
            log.info("the server takes at most %d texts per request: sending %d in requests of %d", smaller,
                     len(items), smaller)
            limit = smaller
            continue
        start += len(chunk)
        if start >= len(items):
            break
    if len(answers) == 1:
        return answers[0], limit
    if field == "instances":
        return {"predictions": [p for answer in answers for p in answer["predictions"]]}, limit
    return [p for answer in answers for p in answer], limit


def json_body(field: str, value: Any, top_k: int | None) -> dict:
    return {field: value, **({"top_k": top_k} if top_k is not None else {})}


def _is_invalid_key(r: requests.Response) -> bool:
    return r.status_code in (400, 401, 403) and "InvalidKeyException" in r.text[:500]


def _path(*parts: str | None) -> str:
    return "/".join(quote(str(p), safe="") for p in parts if p is not None)


class TorchServeClient:
    def __init__(self, inference_url: str, management_url: str, key_file: Path, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.25, session: requests.Session | None = None,
                 max_texts: int = DEFAULT_MAX_TEXTS):
        """`max_texts`: the most texts one request carries (a longer list is split, see `in_chunks`)."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if max_texts < 1:
            raise ValueError("max_texts must be >= 1")
        self.max_texts = max_texts
        self.inference_url, self.management_url = inference_url.rstrip("/"), management_url.rstrip("/")
        self.key_file = Path(key_file)
        self.keys = KeyStore(self.key_file, self.management_url)
        self.timeout, self.backoff = timeout, Backoff(retries, backoff_s)
        self.session = session or requests.Session()

    # ---- plumbing -------------------------------------------------------------------------
    def _key(self, api: str) -> str | None:
        return self.keys.current(api)

    def request(self, api: str, method: str, url: str, retry: bool = False, headers: dict | None = None,
                **kwargs) -> requests.Response:
        """Send with `api`'s key; if `retry` (idempotent calls only), retry what `retryable` allows and
        connection errors with backoff; recover a refused key once; raise TorchServeError."""
        key, recovered = self._key(api), False
        delays = self.backoff.delays() if retry else iter(())
        while True:
            r = self._send(api, method, url, dict(headers or {}, **bearer(key)), delays, **kwargs)
            if r is None or (retryable(r.status_code, r.content) and pause(delays)):
                continue
            if _is_invalid_key(r) and not recovered:
                recovered, new_key = True, self.keys.recover(api, key)
                if new_key is not None:
                    key = new_key
                    continue
            if r.ok:
                return r
            raise error_from_response(r, self.key_file)

    def _send(self, api: str, method: str, url: str, headers: dict, delays: Iterator[float],
              **kwargs) -> requests.Response | None:
        """One attempt: the answer, or None when a connection error is retried (after its pause)."""
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as e:  # ConnectTimeout included: the request never reached the server
            if pause(delays):
                return None
            base = self.inference_url if api == "inference" else self.management_url
            raise ServerUnreachable(base, "ConnectionError") from e
        except requests.Timeout:  # a request that hung may still be running: never sent again
            raise TorchServeError("timeout", f"no answer within {self.timeout:g}s to {method} {url}; "
                                             "not sent again") from None

    @staticmethod
    def _json(r: requests.Response) -> Any:
        try:
            return r.json()
        except ValueError:
            return r.text

    # ---- inference --------------------------------------------------------------------------
    def predict(self, name: str, text: str | None = None, *, texts: Sequence[str] | None = None,
                instances: Sequence[Any] | None = None, version: str | None = None, top_k: int | None = None,
                plain: bool = False) -> Any:
        """Classify `text` (JSON {"text"}, or a text/plain body with plain=True), `texts` ({"texts": [...]})
        or KServe v1 `instances` (POST /v1/models/<name>:predict, answered with {"predictions": [...]}).
        A list longer than `max_texts` goes in several requests; the answers come back joined, in order."""
        if sum(x is not None for x in (text, texts, instances)) != 1:
            raise ValueError("give exactly one of text, texts or instances")
        if plain and (text is None or top_k is not None):
            raise ValueError("plain=True sends one text as a text/plain body, without top_k")
        if plain:
            return self.post_prediction(name, text.encode("utf-8"), "text/plain; charset=utf-8", version)
        if text is not None:
            return self._post_json(name, json_body("text", text, top_k), version)
        field, items = ("texts", texts) if texts is not None else ("instances", instances)
        answer, self.max_texts = in_chunks(lambda chunk: self._post_json(name, json_body(field, chunk, top_k), version),
                                           items, self.max_texts, field)
        return answer

    def explain(self, name: str, text: str | None = None, *, texts: Sequence[str] | None = None,
                label: str | None = None, version: str | None = None) -> Any:
        """Each word's weight in the decision (POST /explanations/<name>[/<version>], handlers/explanations.py):
        `text` gets one explanation, `texts` a list; `label` explains that label instead of the predicted one."""
        if (text is None) == (texts is None):
            raise ValueError("give exactly one of text or texts")
        body = {"text": text} if text is not None else {"texts": list(texts)}
        url = f"{self.inference_url}/explanations/{_path(name, version)}"
        r = self.request("inference", "POST", url, retry=True, json={**body, **({"label": label} if label else {})})
        return self._json(r)

    def _post_json(self, name: str, body: dict, version: str | None) -> Any:
        if "instances" in body and version is None:
            # The KServe v1 route has no version segment; a versioned call uses /predictions below.
            url = f"{self.inference_url}/v1/models/{_path(name)}:predict"
            return self._json(self.request("inference", "POST", url, retry=True, json=body))
        return self.post_prediction(name, json.dumps(body).encode("utf-8"), "application/json", version)

    def post_prediction(self, name: str, body: bytes, content_type: str, version: str | None = None) -> Any:
        """POST raw bytes to /predictions/<name>[/<version>] (also how malformed bodies are sent in tests)."""
        url = f"{self.inference_url}/predictions/{_path(name, version)}"
        r = self.request("inference", "POST", url, retry=True, data=body, headers={"Content-Type": content_type})
        return self._json(r)

    def health(self) -> dict:
        # Not retried: a health check reports the server's state now, and a down server at once.
        return self._json(self.request("inference", "GET", f"{self.inference_url}/ping"))

    # ---- management -------------------------------------------------------------------------
    def register(self, name: str, url: str, initial_workers: int = 1, batch_size: int = 1,
                 max_batch_delay: int = 100, synchronous: bool = True, response_timeout: int | None = None) -> dict:
        params = {"url": url, "model_name": name, "initial_workers": initial_workers, "batch_size": batch_size,
                  "max_batch_delay": max_batch_delay, "synchronous": str(synchronous).lower()}
        if response_timeout is not None:
            params["response_timeout"] = response_timeout
        return self._json(self.request("management", "POST", f"{self.management_url}/models", params=params))

    def scale(self, name: str, version: str | None = None, min_workers: int = 1, max_workers: int | None = None,
              synchronous: bool = True) -> dict:
        params = {"min_worker": min_workers, "max_worker": max_workers if max_workers is not None else min_workers,
                  "synchronous": str(synchronous).lower()}
        url = f"{self.management_url}/models/{_path(name, version)}"
        return self._json(self.request("management", "PUT", url, params=params))

    def set_default(self, name: str, version: str) -> dict:
        url = f"{self.management_url}/models/{_path(name, version)}/set-default"
        return self._json(self.request("management", "PUT", url))

    def unregister(self, name: str, version: str | None = None, drain: bool = True) -> dict:
        """Unregister one version (after draining it, see `drain`) or, without a version, the whole model."""
        if drain and version is not None:
            self.drain(name, version)
        return self._json(self.request("management", "DELETE", f"{self.management_url}/models/{_path(name, version)}"))

    def drain(self, name: str, version: str, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Make sure nothing is queued for, or running on, a version about to be unregistered.

        Why: TorchServe 0.12 puts the batch a worker is running back into its version's queue when the
        worker is shut down (WorkerThread.shutdown -> BatchAggregator.sendError(null) -> model.addFirst),
        and unregistering the version then drops that queue: those requests are never answered, not even
        with an error (bench/results/switch_stress.md measured 16 lost in 3 cycles before this). So, once
        the version is no longer the default (it then gets no new unversioned requests):
        1. wait until its queue is empty;
        2. scale it to one worker, so a batch re-queued by a worker shutting down is served by the last one;
        3. send that worker a probe and wait for the answer: a worker runs one batch at a time, so the
           answer means the batch it was running has been answered;
        4. repeat while requests that chose the version just before the default changed are still queued.
        The probe is a request the handler rejects (400); it adds one rejected request to the version's
        metrics. The default version itself is left alone: TorchServe refuses to unregister it."""
        try:
            (default,) = self.describe(name)
            if default["modelVersion"] == version:
                return
            deadline = time.monotonic() + timeout_s
            (described,) = self.describe(name, version)
            if len(described["workers"]) > 1:
                self.scale(name, version, min_workers=1, max_workers=1)
            while time.monotonic() < deadline:
                self._wait_for_empty_queue(name, version, deadline)
                try:
                    self.post_prediction(name, DRAIN_PROBE, "application/json", version)
                except TorchServeError:
                    pass  # the expected 400: the worker answered, so it is idle
                (described,) = self.describe(name, version)
                if described["jobQueueStatus"]["pendingRequests"] == 0:
                    return
        except (TorchServeError, KeyError, ValueError):
            return  # unknown model or version: unregister reports it

    def _wait_for_empty_queue(self, name: str, version: str, deadline: float) -> None:
        empty_polls = 0
        while empty_polls < 2 and time.monotonic() < deadline:
            (described,) = self.describe(name, version)
            empty_polls = empty_polls + 1 if described["jobQueueStatus"]["pendingRequests"] == 0 else 0
            time.sleep(0.05)

    def list_models(self) -> list[dict]:
        """Every registered model (following TorchServe's pagination)."""
        models, token = [], None
        while True:
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            page = self._json(self.request("management", "GET", f"{self.management_url}/models", params=params,
                                           retry=True))
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, name: str, version: str | None = None) -> list[dict]:
        """One entry per version: `version` None describes the default one, "all" every version."""
        return self._json(self.request("management", "GET", f"{self.management_url}/models/{_path(name, version)}",
                                       retry=True))  # read-only, so safe to send again
