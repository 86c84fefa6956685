"""Server-sent events framing for streamed responses: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

Knows nothing about what the JSON objects mean.
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["sse_event", "SSE_DONE", "SSE_HEADERS"]

SSE_DONE = "data: [DONE]\n\n"
# Proxies (nginx) must not buffer a token stream.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(obj: Any) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"
