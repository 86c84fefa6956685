"""What one request may cost: body size, JSON-schema size, and whether control tokens are honoured.

:class:`RequestLimits` is read from :class:`~autoglm.config.ServerSettings` once by the app factory and
handed to the body-size middleware and the request conversion. Defaults are sane for a public
endpoint: a 4 MiB body (a 128k-token prompt is about 0.5 MB of text), a 128 KiB schema (thousands of
properties), and client text never encoded as control tokens. Knows nothing about engines or HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RequestLimits", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_SCHEMA_BYTES"]

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_SCHEMA_BYTES = 128 * 1024


@dataclass(frozen=True)
class RequestLimits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # request body; larger -> 413
    max_schema_bytes: int = DEFAULT_MAX_SCHEMA_BYTES  # one JSON schema (response_format, a tool's parameters)
    allow_control_tokens: bool = False  # True: special-token strings in client text become control tokens

    @classmethod
    def from_settings(cls, server: Any) -> RequestLimits:
        return cls(
            max_request_bytes=int(getattr(server, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)),
            max_schema_bytes=int(getattr(server, "max_schema_bytes", DEFAULT_MAX_SCHEMA_BYTES)),
            allow_control_tokens=bool(getattr(server, "allow_control_tokens", False)),
        )
