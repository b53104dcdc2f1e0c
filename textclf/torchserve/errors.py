"""What a call to TorchServe can end in, for every client (REST, gRPC, the key store): one line each."""
from __future__ import annotations

from pathlib import Path

from textclf.core.errors import Failure


class TorchServeError(Failure):
    """A call TorchServe (or the handler) refused; str() is one line with status and message. `status` is
    the HTTP status, the gRPC code's name, or "timeout" / "unreachable" for a call that got no answer."""

    def __init__(self, status: int | str, message: str, kind: str | None = None):
        self.status, self.message, self.kind = status, message, kind
        super().__init__(f"TorchServe {status}{f' {kind}' if kind else ''}: {message}")


class TokenRefused(TorchServeError):
    """The server refused the token; the message says which key file was used and what to do."""

    def __init__(self, status: int | str, message: str, key_file: Path, kind: str | None = "InvalidKeyException"):
        super().__init__(status, message, kind)
        self.args = (
            f"token refused: TorchServe answered {' '.join(str(x) for x in (status, kind) if x)} "
            f"({message.rstrip('.')}) — the key in {key_file} is "
            "missing, wrong or expired; make sure you call the server started with this state dir "
            "(restart it with `textclf stop`, then `textclf serve`)",
        )

    def __str__(self) -> str:
        return self.args[0]


class ServerUnreachable(TorchServeError):
    """No connection to TorchServe at `url` could be made; `cause` says how the client saw it."""

    def __init__(self, url: str, cause: str):
        super().__init__("unreachable", f"cannot reach TorchServe at {url}", cause)
        self.url = url
        self.args = (f"cannot reach TorchServe at {url} ({cause}): is it running? (start it with `textclf serve`)",)

    def __str__(self) -> str:
        return self.args[0]
