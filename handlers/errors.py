"""Why a request was refused: the one error enum of the handler, and the one map from a reason to its HTTP status.

Every body the handler refuses, whichever protocol it spoke (plain JSON, KServe v1, the Open Inference Protocol)
and whichever endpoint it reached (predictions, explanations), is answered `{"error": message, "type": code}`
with the status below. Clients branch on `type`; messages name the field, never its content.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PHRASES = {400: "Bad Request", 413: "Payload Too Large"}


class ErrorType(Enum):
    NO_BODY = ("no_body", 400)
    INVALID_ENCODING = ("invalid_encoding", 400)
    INVALID_JSON = ("invalid_json", 400)
    INVALID_REQUEST = ("invalid_request", 400)  # the body's shape: fields, kinds, empty lists, v2 tensors
    INVALID_TEXT = ("invalid_text", 400)
    INVALID_TOP_K = ("invalid_top_k", 400)
    INVALID_LABEL = ("invalid_label", 400)  # an explanation asked for a label the model does not have
    TOO_MANY_TEXTS = ("too_many_texts", 413)
    TOO_MANY_WINDOWS = ("too_many_windows", 413)  # a text longer than the archive's max_windows (long texts)
    TOO_MANY_WORDS = ("too_many_words", 413)  # a text to explain with more words than explain_max_words

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


class InvalidRequest(Exception):
    """Raised while reading a request; the handler answers that request alone with its error."""

    def __init__(self, type: ErrorType, message: str):
        super().__init__(message)
        self.error = RequestError(type, message)


def error_body(error: RequestError) -> dict:
    return {"error": error.message, "type": error.type.code}
