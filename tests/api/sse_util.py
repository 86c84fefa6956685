"""Parse an SSE body into JSON events (and check it ends with [DONE])."""
from __future__ import annotations

import json
from typing import Any


def parse_sse(body: str) -> list[dict[str, Any]]:
    frames = [f for f in body.split("\n\n") if f.strip()]
    assert frames, "empty stream"
    assert frames[-1] == "data: [DONE]", frames[-1]
    events = []
    for frame in frames[:-1]:
        assert frame.startswith("data: "), frame
        events.append(json.loads(frame[len("data: "):]))
    return events
