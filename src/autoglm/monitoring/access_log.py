"""JSON-lines access log: one object per HTTP request on the ``autoglm.access`` logger.

:class:`AccessRecord` is what the HTTP layer fills in while it serves a request (who by key *name*,
which model, tokens, timings, cache status, status code, stream flag); :func:`emit` writes it as one
JSON line. :func:`configure_access_log` points the logger at stderr (``"-"``), a file, or nowhere
(``"off"``). The record has no field for the API key or the prompt, so neither can be logged.

The record has no query string either; and :func:`configure_access_log` also installs
:class:`RedactQueryFilter` on uvicorn's own access logger, which logs the full request target, so a
key sent as ``?api_key=...`` (or ``key``, ``token``, ``access_token``...) is logged as ``api_key=***``.

Knows nothing about HTTP frameworks, engines or the gateway.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["AccessRecord", "emit", "configure_access_log", "LOGGER_NAME", "RedactQueryFilter", "redact_query"]

LOGGER_NAME = "autoglm.access"
_OFF = ("off", "none", "")


@dataclass
class AccessRecord:
    request_id: str
    method: str
    path: str
    start: float = field(default_factory=time.monotonic)  # monotonic; not logged
    key_name: str | None = None
    model: str | None = None
    stream: bool = False
    cache: str = "none"  # hit | miss | bypass | none (not cacheable or no cache)
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None

    def first_token(self) -> None:
        """Mark the first token (or first replayed byte) of the response, once."""
        if self.ttft_ms is None:
            self.ttft_ms = round((time.monotonic() - self.start) * 1000, 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("start")
        d["ts"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return d


def emit(record: AccessRecord) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if record.latency_ms is None:
        record.latency_ms = round((time.monotonic() - record.start) * 1000, 2)
    if logger.isEnabledFor(logging.INFO):
        logger.info(json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False))


_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|secret)=)[^&#\s]*")


def redact_query(text: str) -> str:
    """``/v1/models?api_key=agl-xyz&x=1`` -> ``/v1/models?api_key=***&x=1``."""
    return _SECRET_PARAM.sub(r"\1***", text) if "=" in text else text


class RedactQueryFilter(logging.Filter):
    """Rewrites secret query parameters in a log record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


def _install_redaction(name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())


def configure_access_log(target: str | Path | None = "-") -> logging.Logger:
    """Send access lines to stderr (``"-"``), append them to a file, or turn them off (``"off"``).

    The logger does not propagate, so the lines stay pure JSON whatever the root logger's format is.
    """
    _install_redaction()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    text = "-" if target is None else str(target)
    if text.lower() in _OFF:
        logger.setLevel(logging.CRITICAL + 1)
        return logger
    if text == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        path = Path(text).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger
