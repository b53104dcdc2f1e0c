"""Request bodies in, response bodies out, for one request of a TorchServe batch.

Kept out of text_classifier.py because TorchServe requires the handler module to define exactly
one class. Nothing here logs or echoes request text: error messages name the field, not its content.

Accepted bodies (TorchServe hands over parsed JSON as dict/list, text/* as str, anything else as bytes):
    text/plain                         -> one prediction object
    {"text": "..."}                    -> one prediction object
    {"texts": ["...", ...]}            -> a list of prediction objects, in input order
    {"instances": ["..." | {"text": "..."}, ...]}  (KServe v1) -> {"predictions": [...]}
    each JSON form may add "top_k": an integer >= 1 (clamped to the number of labels)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum

from handlers.config import HandlerConfig

JSON_KEYS = ("text", "texts", "instances", "top_k")
PHRASES = {400: "Bad Request", 413: "Payload Too Large"}


class ErrorType(Enum):
    """Why a request was refused: the `type` of its error body, and the one map from reason to HTTP status."""

    NO_BODY = ("no_body", 400)
    INVALID_ENCODING = ("invalid_encoding", 400)
    INVALID_JSON = ("invalid_json", 400)
    INVALID_REQUEST = ("invalid_request", 400)  # the body's shape: fields, kinds, empty lists
    INVALID_TEXT = ("invalid_text", 400)
    INVALID_TOP_K = ("invalid_top_k", 400)
    TOO_MANY_TEXTS = ("too_many_texts", 413)

    def __init__(self, code: str, status: int):
        self.code, self.status = code, status


@dataclass(frozen=True)
class RequestError:
    type: ErrorType
    message: str

    @property
    def status(self) -> int:
        return self.type.status

    @property
    def phrase(self) -> str:
        return PHRASES[self.status]


class Shape(Enum):
    """How a request's predictions are wrapped in its response body."""

    ONE = "one"
    LIST = "list"
    PREDICTIONS = "predictions"

    def wrap(self, predictions: list):
        if self is Shape.ONE:
            return predictions[0]
        return predictions if self is Shape.LIST else {"predictions": predictions}


@dataclass(frozen=True)
class Parsed:
    """One request after parsing: texts to classify, or the error to answer with."""

    texts: tuple = ()
    top_k: int | None = None
    shape: Shape = Shape.ONE
    error: RequestError | None = None


class _Invalid(Exception):
    def __init__(self, type: ErrorType, message: str):
        super().__init__(message)
        self.error = RequestError(type, message)


def parse_request(row, config: HandlerConfig) -> Parsed:
    try:
        return _parse_body(_body_of(row), config)
    except _Invalid as e:
        return Parsed(error=e.error)


def _body_of(row):
    if isinstance(row, dict) and "body" in row:
        return row["body"]
    if isinstance(row, dict) and "data" in row:
        return row["data"]
    # TorchServe hands a form-encoded body (curl -d without a Content-Type) over without a body.
    raise _Invalid(ErrorType.NO_BODY, "request has no body; send Content-Type: application/json or text/plain "
                   "(a form-encoded body, e.g. curl -d without -H, arrives empty)")


def _parse_body(body, config: HandlerConfig) -> Parsed:
    if isinstance(body, (bytes, bytearray)):
        body = _decode(bytes(body))
    if isinstance(body, str):
        return Parsed(texts=(_text(body, "body", config),), top_k=config.default_top_k)
    if isinstance(body, dict):
        return _parse_object(body, config)
    raise _Invalid(ErrorType.INVALID_REQUEST,
                   f"JSON body must be an object with 'text', 'texts' or 'instances', got {_kind(body)}")


def _decode(raw: bytes):
    """Bytes arrive when the content type was neither JSON nor text/*, or TorchServe failed to decode it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(ErrorType.INVALID_ENCODING, f"body is not valid UTF-8 (byte {e.start})") from None
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Invalid(ErrorType.INVALID_JSON,
                       f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # any exception escaping here would fail every request of the batch
        raise _Invalid(ErrorType.INVALID_JSON, "body is not valid JSON: nested too deeply") from None
    except ValueError:  # e.g. an integer literal longer than Python's 4300-digit limit
        raise _Invalid(ErrorType.INVALID_JSON, "body is not valid JSON: a number is too long") from None


def _parse_object(obj: dict, config: HandlerConfig) -> Parsed:
    unknown = sorted(str(k) for k in obj if k not in JSON_KEYS)
    if unknown:  # a typo such as "topk" must not be silently ignored
        raise _Invalid(ErrorType.INVALID_REQUEST, f"unknown field(s) {unknown}; allowed: {list(JSON_KEYS)}")
    given = [k for k in ("text", "texts", "instances") if k in obj]
    if len(given) != 1:
        raise _Invalid(ErrorType.INVALID_REQUEST, "JSON body needs exactly one of 'text', 'texts' or 'instances'"
                       + (f", got {given}" if given else ""))
    top_k = _top_k(obj.get("top_k"), config)
    if "text" in obj:
        return Parsed(texts=(_text(obj["text"], "text", config),), top_k=top_k, shape=Shape.ONE)
    if "texts" in obj:
        items = _items(obj["texts"], "texts", config)
        return Parsed(texts=tuple(_text(t, f"texts[{i}]", config) for i, t in enumerate(items)), top_k=top_k, shape=Shape.LIST)
    items = _items(obj["instances"], "instances", config)
    texts = tuple(_text(_instance_text(x, i), f"instances[{i}]", config) for i, x in enumerate(items))
    return Parsed(texts=texts, top_k=top_k, shape=Shape.PREDICTIONS)


def _top_k(value, config: HandlerConfig) -> int | None:
    if value is None:
        return config.default_top_k
    if isinstance(value, bool) or not isinstance(value, int):
        # Its kind, never its content.
        raise _Invalid(ErrorType.INVALID_TOP_K, f"'top_k' must be an integer >= 1, got {_kind(value)}")
    if value < 1:
        raise _Invalid(ErrorType.INVALID_TOP_K, f"'top_k' must be an integer >= 1, got {str(value)[:20]}")
    return value


def _items(value, field: str, config: HandlerConfig) -> list:
    if not isinstance(value, list):
        raise _Invalid(ErrorType.INVALID_REQUEST, f"'{field}' must be a list of strings, got {_kind(value)}")
    if not value:
        raise _Invalid(ErrorType.INVALID_REQUEST, f"'{field}' is empty")
    if len(value) > config.max_texts_per_request:
        raise _Invalid(ErrorType.TOO_MANY_TEXTS,
                       f"'{field}' has {len(value)} entries; at most {config.max_texts_per_request} per request")
    return value


def _instance_text(instance, i: int):
    if isinstance(instance, dict):
        if set(instance) != {"text"}:
            raise _Invalid(ErrorType.INVALID_REQUEST, f"instances[{i}] must be a string or an object with only 'text'")
        return instance["text"]
    return instance


def _text(value, field: str, config: HandlerConfig) -> str:
    if not isinstance(value, str):
        raise _Invalid(ErrorType.INVALID_TEXT, f"{field} must be a string, got {_kind(value)}")
    if not value.strip():
        raise _Invalid(ErrorType.INVALID_TEXT, f"{field} is empty")
    value = value[: config.max_text_chars]
    try:  # JSON may carry lone surrogates ("\ud800"); the tokenizer would raise on them for the whole batch
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Invalid(ErrorType.INVALID_TEXT,
                       f"{field} is not valid Unicode (lone surrogate at character {e.start})") from None
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def error_body(error: RequestError) -> dict:
    return {"error": error.message, "type": error.type.code}


class OneLineDecodeWarnings(logging.Filter):
    """TorchServe's worker logs a body it cannot decode as JSON or UTF-8 with a full traceback (13 lines per
    malformed request in model_log.log). The handler answers such a body with a clear 400 of its own, so
    the warning keeps its one line and loses only the traceback; every other record passes unchanged."""

    MESSAGES = ("Failed json decoding of input data", "Failed utf-8 decoding of input data")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(self.MESSAGES):
            record.exc_info, record.exc_text = None, None
        return True
