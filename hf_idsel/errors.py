"""Every error hf_idsel raises on purpose, in one place.

Messages name the argument at fault and the fix. All errors derive from [`IdselError`], so
`except hf_idsel.IdselError` catches them; argument errors are also `ValueError`s. Messages that
quote a Hub client's error pass through [`redact_token`] first: no error or log line shows a token.
"""

import re

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class IdselError(Exception):
    """Base class of hf_idsel's own errors."""


class InvalidArgumentError(IdselError, ValueError):
    """An argument (or the data it points at) cannot be used; raised before any expensive work."""


class SelectionMismatchError(IdselError):
    """A saved selection does not match the pool (or the manifest's own digest)."""


class MissingDependencyError(IdselError, ImportError):
    """An optional package needed for the requested feature is not installed."""


class MethodConflictError(IdselError, RuntimeError):
    """`datasets.Dataset` already has a `diverse_select` attribute that hf_idsel did not install."""


class PushError(IdselError, RuntimeError):
    """A push to the Hub stopped. Everything is staged locally; the message says how to finish.

    Attributes: `pushed` and `not_pushed` (push steps), `folder` (the staged copy), `status` (HTTP
    status of the last failure, or `None` for a network error).
    """

    def __init__(self, message: str, *, pushed=(), not_pushed=(), folder: str | None = None, status: int | None = None):
        super().__init__(message)
        self.pushed = list(pushed)
        self.not_pushed = list(not_pushed)
        self.folder = folder
        self.status = status


def redact_token(text: str, token=None) -> str:
    """`text` without any Hub token in it: `token` itself (when a string) and anything shaped like one (`hf_...`)."""
    if isinstance(token, str) and token.strip():
        # Also where a client quotes it without its line end (a token read from a file).
        text = text.replace(token, "***").replace(token.strip(), "***")
    return _TOKEN_PATTERN.sub("hf_***", text)
