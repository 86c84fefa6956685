"""User-facing errors.

Every error a person can cause (a bad flag, a model name that does not exist, weights that cannot be
found, a config file with a wrong key) is an :class:`AutoGLMError` whose message says what was wrong,
with the value, and what to do instead. The CLI prints ``error: <message>`` on one line and exits
non-zero; the HTTP layer maps them to OpenAI error objects. Nothing here knows about HTTP or argparse.
"""
from __future__ import annotations

__all__ = [
    "AutoGLMError",
    "ConfigError",
    "ModelNotFoundError",
    "NotFoundError",
    "DownloadError",
    "UnsupportedError",
    "InvalidRequestError",
    "OverloadedError",
]


class AutoGLMError(Exception):
    """Base of every error meant to be shown to a person as one line."""

    exit_code: int = 2


class ConfigError(AutoGLMError):
    """A setting or config file value is wrong. ``where`` is ``file:line key`` when known."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ModelNotFoundError(AutoGLMError):
    """A model name resolves to nothing (not an alias, not a repo id, not a local directory)."""


class NotFoundError(AutoGLMError):
    """A named record (pipeline, run, study, registered model) does not exist; the message lists what does.
    ``param`` names the argument that held the name (the HTTP layer answers 404)."""

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        super().__init__(message)


class DownloadError(AutoGLMError):
    """Weights are missing locally and could not be fetched; the message lists what was tried."""


class UnsupportedError(AutoGLMError):
    """A valid request for something this build cannot do (yet), e.g. int4 on CPU."""


class InvalidRequestError(AutoGLMError):
    """A request's parameters are out of range. ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        super().__init__(message)


class OverloadedError(AutoGLMError):
    """The engine's queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        self.retry_after = retry_after
        super().__init__(message)
