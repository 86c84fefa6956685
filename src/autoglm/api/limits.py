"""What one request may cost: body size, JSON-schema size, and whether control tokens are honoured.

:class:`RequestLimits` is read from :class:`~autoglm.config.ServerSettings` once by the app factory and
handed to the body-size middleware and the request conversion. Defaults are sane for a public
endpoint: a 4 MiB body (a 128k-token prompt is about 0.5 MB of text), a 128 KiB schema (thousands of
properties), client text never encoded as control tokens, and for images in chat messages 10 MiB and
16 megapixels an image, 8 a request, 10 s to fetch a URL, no URLs of private addresses. Knows nothing about engines or HTTP.
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
    # images in chat messages (autoglm.api.vision)
    max_image_bytes: int = 10 * 1024 * 1024  # one image, as sent or fetched
    max_images: int = 8  # per request
    max_image_pixels: int = 4096 * 4096  # width x height of one image
    image_fetch_timeout: float = 10.0  # seconds for one http(s) image_url, connecting to the last byte
    image_fetch_private: bool = False  # True: image URLs may name loopback / private addresses

    @classmethod
    def from_settings(cls, server: Any) -> RequestLimits:
        d = cls()
        return cls(
            max_request_bytes=int(getattr(server, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)),
            max_schema_bytes=int(getattr(server, "max_schema_bytes", DEFAULT_MAX_SCHEMA_BYTES)),
            allow_control_tokens=bool(getattr(server, "allow_control_tokens", False)),
            max_image_bytes=int(getattr(server, "max_image_bytes", d.max_image_bytes)),
            max_images=int(getattr(server, "max_images", d.max_images)),
            max_image_pixels=int(getattr(server, "max_image_pixels", d.max_image_pixels)),
            image_fetch_timeout=float(getattr(server, "image_fetch_timeout", d.image_fetch_timeout)),
            image_fetch_private=bool(getattr(server, "image_fetch_private", d.image_fetch_private)),
        )
