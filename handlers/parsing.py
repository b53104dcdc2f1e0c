"""Request bodies in, response bodies out, for one request of a TorchServe batch.

Kept out of text_classifier.py because TorchServe requires the handler module to define exactly
one class. Nothing here logs or echoes request text: error messages name the field, not its content.

Accepted bodies (TorchServe hands over parsed JSON as dict/list, text/* as str, anything else as bytes):
    text/plain                         -> one prediction object
    {"text": "..."}                    -> one prediction object
    {"texts": ["...", ...]}            -> a list of prediction objects, in input order
    {"instances": ["..." | {"text": "..."}, ...]}  (KServe v1) -> {"predictions": [...]}
    {"inputs": [{"name": "text", "datatype": "BYTES", ...}]}  (Open Inference Protocol, KServe v2)
                                       -> a v2 response (handlers/open_inference.py)
    each JSON form may add "top_k": an integer >= 1 (clamped to the number of labels); v2 in "parameters"
Explanation requests (/explanations) take the same bodies but v2, and may add "label" (handlers/explanations.py).
Errors and their HTTP statuses: handlers/errors.py. docs/openapi.yaml describes every body.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from enum import Enum

from handlers import open_inference
from handlers.config import HandlerConfig
from handlers.errors import ErrorType, InvalidRequest, RequestError
from handlers.explanations import words_of

JSON_KEYS = ("text", "texts", "instances", "top_k")
EXPLAIN_KEYS = (*JSON_KEYS, "label")  # an explanation may name the label to explain


class Shape(Enum):
    """How a request's predictions are wrapped in its response body."""

    ONE = "one"
    LIST = "list"
    PREDICTIONS = "predictions"

    def wrap(self, predictions: list, model: tuple[str, str], key: str = "predictions"):
        """The response body; `key` names KServe v1's list ("explanations" for an explanation)."""
        del model  # the v2 shape (handlers/open_inference.py) names the model; these bodies do not
        if self is Shape.ONE:
            return predictions[0]
        return predictions if self is Shape.LIST else {key: predictions}


@dataclass(frozen=True)
class Parsed:
    """One request after parsing: texts to classify, or the error to answer with."""

    texts: tuple = ()
    top_k: int | None = None
    shape: Shape | open_inference.V2Shape = Shape.ONE
    error: RequestError | None = None
    explain: bool = False  # an explanation request (TorchServe's /explanations), not a prediction
    label: str | None = None  # the label an explanation asks for (None: the predicted label(s))


def parse_request(row, config: HandlerConfig, explain: bool = False, labels=()) -> Parsed:
    """One request of a batch; `explain`: it reached /explanations (TorchServe's explain header), which takes the
    same bodies plus "label" (one of `labels`) and has limits of its own: explaining costs a forward per word."""
    try:
        parsed = _parse_body(_body_of(row), config, explain)
        return _explanation(replace(parsed, explain=True), config, labels) if explain else parsed
    except InvalidRequest as e:
        return Parsed(error=e.error, explain=explain)


def _explanation(parsed: Parsed, config: HandlerConfig, labels) -> Parsed:
    if isinstance(parsed.shape, open_inference.V2Shape):
        raise InvalidRequest(ErrorType.INVALID_REQUEST, "explanations take 'text', 'texts' or 'instances' bodies, "
                             "not the Open Inference Protocol's")
    if len(parsed.texts) > config.explain_max_texts:
        raise InvalidRequest(ErrorType.TOO_MANY_TEXTS, f"{len(parsed.texts)} texts to explain; at most "
                             f"{config.explain_max_texts} per explanation request")
    for i, text in enumerate(parsed.texts):
        if (n := len(words_of(text))) > config.explain_max_words:
            raise InvalidRequest(ErrorType.TOO_MANY_WORDS, f"text {i} has {n} words; at most "
                                 f"{config.explain_max_words} per text to explain")
    if parsed.label is not None and parsed.label not in labels:
        raise InvalidRequest(ErrorType.INVALID_LABEL, "'label' is not one of the model's labels")
    return parsed


def _body_of(row):
    if isinstance(row, dict) and "body" in row:
        return row["body"]
    if isinstance(row, dict) and "data" in row:
        return row["data"]
    # TorchServe hands a form-encoded body (curl -d without a Content-Type) over without a body.
    raise InvalidRequest(ErrorType.NO_BODY, "request has no body; send Content-Type: application/json or text/plain "
                         "(a form-encoded body, e.g. curl -d without -H, arrives empty)")


def _parse_body(body, config: HandlerConfig, explain: bool) -> Parsed:
    if isinstance(body, (bytes, bytearray)):
        body = _decode(bytes(body))
    if isinstance(body, str):
        return Parsed(texts=(_text(body, "body", config),), top_k=config.default_top_k)
    if isinstance(body, dict):
        return _parse_object(body, config, explain)
    raise InvalidRequest(ErrorType.INVALID_REQUEST,
                         f"JSON body must be an object with 'text', 'texts' or 'instances', got {_kind(body)}")


def _decode(raw: bytes):
    """Bytes arrive when the content type was neither JSON nor text/*, or TorchServe failed to decode it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(ErrorType.INVALID_ENCODING, f"body is not valid UTF-8 (byte {e.start})") from None
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(ErrorType.INVALID_JSON,
                             f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # any exception escaping here would fail every request of the batch
        raise InvalidRequest(ErrorType.INVALID_JSON, "body is not valid JSON: nested too deeply") from None
    except ValueError:  # e.g. an integer literal longer than Python's 4300-digit limit
        raise InvalidRequest(ErrorType.INVALID_JSON, "body is not valid JSON: a number is too long") from None


def _parse_object(obj: dict, config: HandlerConfig, explain: bool) -> Parsed:
    if "inputs" in obj:
        return _parse_v2(obj, config)
    keys = EXPLAIN_KEYS if explain else JSON_KEYS  # the one difference between the two endpoints' bodies
    unknown = sorted(str(k) for k in obj if k not in keys)
    if unknown:  # a typo such as "topk" must not be silently ignored
        raise InvalidRequest(ErrorType.INVALID_REQUEST, f"unknown field(s) {unknown}; allowed: {list(keys)}")
    given = [k for k in ("text", "texts", "instances") if k in obj]
    if len(given) != 1:
        raise InvalidRequest(ErrorType.INVALID_REQUEST, "JSON body needs exactly one of 'text', 'texts' or 'instances'"
                             + (f", got {given}" if given else ""))
    top_k, label = _top_k(obj.get("top_k"), config), _label(obj.get("label"))
    if "text" in obj:
        texts, shape = (_text(obj["text"], "text", config),), Shape.ONE
    elif "texts" in obj:
        items = _items(obj["texts"], "texts", config)
        texts, shape = tuple(_text(t, f"texts[{i}]", config) for i, t in enumerate(items)), Shape.LIST
    else:
        items = _items(obj["instances"], "instances", config)
        texts = tuple(_text(_instance_text(x, i), f"instances[{i}]", config) for i, x in enumerate(items))
        shape = Shape.PREDICTIONS
    return Parsed(texts=texts, top_k=top_k, shape=shape, label=label)


def _parse_v2(obj: dict, config: HandlerConfig) -> Parsed:
    values, parameters, shape = open_inference.parse(obj, config.max_texts_per_request)
    texts = tuple(_text(t, f"inputs[0].data[{i}]", config) for i, t in enumerate(values))
    return Parsed(texts=texts, top_k=_top_k(parameters.get("top_k"), config), shape=shape)


def _label(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(ErrorType.INVALID_LABEL, f"'label' must be a string, got {_kind(value)}")
    return value


def _top_k(value, config: HandlerConfig) -> int | None:
    if value is None:
        return config.default_top_k
    if isinstance(value, bool) or not isinstance(value, int):
        # Its kind, never its content.
        raise InvalidRequest(ErrorType.INVALID_TOP_K, f"'top_k' must be an integer >= 1, got {_kind(value)}")
    if value < 1:
        raise InvalidRequest(ErrorType.INVALID_TOP_K, f"'top_k' must be an integer >= 1, got {str(value)[:20]}")
    return value


def _items(value, field: str, config: HandlerConfig) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(ErrorType.INVALID_REQUEST, f"'{field}' must be a list of strings, got {_kind(value)}")
    if not value:
        raise InvalidRequest(ErrorType.INVALID_REQUEST, f"'{field}' is empty")
    if len(value) > config.max_texts_per_request:
        raise InvalidRequest(ErrorType.TOO_MANY_TEXTS,
                       f"'{field}' has {len(value)} entries; at most {config.max_texts_per_request} per request")
    return value


def _instance_text(instance, i: int):
    if isinstance(instance, dict):
        if set(instance) != {"text"}:
            raise InvalidRequest(ErrorType.INVALID_REQUEST, f"instances[{i}] must be a string or an object with only 'text'")
        return instance["text"]
    return instance


def _text(value, field: str, config: HandlerConfig) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(ErrorType.INVALID_TEXT, f"{field} must be a string, got {_kind(value)}")
    if not value.strip():
        raise InvalidRequest(ErrorType.INVALID_TEXT, f"{field} is empty")
    value = value[: config.max_text_chars]
    try:  # JSON may carry lone surrogates ("\ud800"); the tokenizer would raise on them for the whole batch
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(ErrorType.INVALID_TEXT,
                       f"{field} is not valid Unicode (lone surrogate at character {e.start})") from None
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


class OneLineDecodeWarnings(logging.Filter):
    """TorchServe's worker logs a body it cannot decode as JSON or UTF-8 with a full traceback (13 lines per
    malformed request in model_log.log). The handler answers such a body with a clear 400 of its own, so
    the warning keeps its one line and loses only the traceback; every other record passes unchanged."""

    MESSAGES = ("Failed json decoding of input data", "Failed utf-8 decoding of input data")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(self.MESSAGES):
            record.exc_info, record.exc_text = None, None
        return True
